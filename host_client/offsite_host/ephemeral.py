"""The run's throw-away SSH identity: an Ed25519 key made for this run, the certificate the
server signs over it, and the archive's known_hosts line, in a private temporary directory
that is removed when the run ends. The key is made with pynacl, so no ssh-keygen is needed."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from nacl.signing import SigningKey

from offsite_host import keys
from offsite_host.session import Session
from offsite_host.transfer import SessionFiles


class Ephemeral:
    def __init__(self, state_dir: Path, host: str) -> None:
        self.state_dir, self.comment = state_dir, f"{host}@offsite-run"
        self.key = SigningKey.generate()
        self._dir: Path | None = None

    @property
    def public_line(self) -> str:
        return keys.public_line(self.key, self.comment)

    @property
    def files(self) -> SessionFiles:
        assert self._dir is not None, "use Ephemeral as a context manager"
        return SessionFiles(self._dir / "id_ed25519", self._dir / "id_ed25519-cert.pub",
                            self._dir / "known_hosts")

    def __enter__(self) -> Ephemeral:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="session-", dir=self.state_dir))  # mode 0700
        keys.write_secret(self.files.key, keys.private_pem(self.key, self.comment,
                                                           secrets.randbits(32)))
        return self

    def write_session(self, session: Session) -> None:
        files = self.files
        keys.write_secret(files.certificate,
                          f"{session.certificate} {self.comment}\n".encode("ascii"))
        keys.write_secret(files.known_hosts, f"{session.known_hosts}\n".encode())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
