"""The host configuration: `host.toml` at the platform's usual place, or `--config`.

Parsing is pure (`parse_config(data, base_dir, platform, environ)`): relative paths are taken
from the configuration file's directory, and every error names the key at fault.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit

from offsite_host import tomlsubset
from offsite_host.exitcodes import ConfigError

HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
TOOL_NAMES = ("rsync", "ssh", "rdiff_backup", "gocryptfs", "fusermount")


@dataclass(frozen=True)
class Tools:
    """The external programs, by name (found on PATH) or by path."""

    rsync: str
    ssh: str
    rdiff_backup: str
    gocryptfs: str
    fusermount: str
    """Unmounts the encrypted view: `fusermount3` on Linux, `umount` on macOS."""


@dataclass(frozen=True)
class Config:
    api_url: str
    host: str
    paths: tuple[Path, ...]
    excludes: tuple[str, ...]
    key_file: Path
    password_file: Path
    repository: Path
    state_dir: Path
    retention_days: int
    max_wait_s: int
    deadline_margin_s: int
    io_timeout_s: int
    bwlimit_kib: int
    tools: Tools
    connect_wait_s: int = 120
    verify_cycle_days: int = 20
    """Every file on the archive is re-read with checksums at least once per this many days
    (`verify_plan`)."""


def default_config_path(platform: str, environ: dict[str, str]) -> PurePath:
    """Where `host.toml` lives when `--config` is not given."""
    if platform == "win32":
        return PureWindowsPath(program_data(environ), "Offsite", "host.toml")
    if platform == "darwin":
        return PurePosixPath("/Library/Application Support/Offsite/host.toml")
    return PurePosixPath("/etc/offsite/host.toml")


def default_data_dir(platform: str, environ: dict[str, str]) -> PurePath:
    """Where the local repository and the state live unless configured."""
    if platform == "win32":
        return PureWindowsPath(program_data(environ), "Offsite")
    if platform == "darwin":
        return PurePosixPath("/Library/Application Support/Offsite")
    return PurePosixPath("/var/lib/offsite")


def program_data(environ: dict[str, str]) -> str:
    """%ProgramData%: Windows' variable names ignore case, and Python there spells the keys of
    os.environ in capitals (PROGRAMDATA)."""
    found = {key.upper(): value for key, value in environ.items()}.get("PROGRAMDATA")
    return found or r"C:\ProgramData"


def default_tools(platform: str) -> dict[str, str]:
    names = {"rsync": "rsync", "ssh": "ssh", "rdiff_backup": "rdiff-backup",
             "gocryptfs": "gocryptfs", "fusermount": "fusermount3"}
    if platform == "darwin":
        names["fusermount"] = "umount"
    if platform == "win32":  # cppcryptfs behind the wrappers offsite-host installs there
        names["gocryptfs"] = "offsite-gocryptfs-cppcryptfs"
        names["fusermount"] = "offsite-unmount-cppcryptfs"
    return names


def load_config(path: Path, platform: str, environ: dict[str, str]) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no configuration at {path} (write one, or pass --config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration {path}: {exc}") from None
    try:
        data = tomlsubset.loads(text)
    except tomlsubset.TomlError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, Path(path).absolute().parent, platform, environ)


_TOP_KEYS = {"api_url", "host", "paths", "excludes", "key_file", "password_file", "repository",
             "state_dir", "retention_days", "max_wait_s", "deadline_margin_s", "io_timeout_s",
             "connect_wait_s", "verify_cycle_days",
             "bwlimit_kib", "tools"}


def parse_config(data: dict[str, Any], base_dir: Path, platform: str,
                 environ: dict[str, str]) -> Config:
    _only(data, _TOP_KEYS, "")
    data_dir = Path(default_data_dir(platform, environ))

    def path(key: str, default: Path) -> Path:
        value = data.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a path (a non-empty string)")
        return base_dir / Path(value).expanduser()

    return Config(
        api_url=_api_url(data.get("api_url")),
        host=_host(data.get("host")),
        paths=_paths(data.get("paths")),
        excludes=tuple(_strings(data.get("excludes", []), "excludes")),
        key_file=path("key_file", base_dir / "host.key"),
        password_file=path("password_file", base_dir / "gocryptfs.pass"),
        repository=path("repository", data_dir / "repository"),
        state_dir=path("state_dir", data_dir / "state"),
        retention_days=_int(data, "retention_days", 20, 1),
        max_wait_s=_int(data, "max_wait_s", 1800, 0),
        deadline_margin_s=_int(data, "deadline_margin_s", 60, 0),
        io_timeout_s=_int(data, "io_timeout_s", 300, 10),
        bwlimit_kib=_int(data, "bwlimit_kib", 0, 0),
        tools=_tools(data.get("tools", {}), platform),
        connect_wait_s=_int(data, "connect_wait_s", 120, 0),
        verify_cycle_days=_int(data, "verify_cycle_days", 20, 1),
    )


def _api_url(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError("api_url is missing (the Offsite API's base URL, https://...)")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query:
        raise ConfigError(f"api_url must be an http(s) URL without a query, not {value!r}")
    return value.rstrip("/")


def _host(value: object) -> str:
    if not isinstance(value, str) or not HOST_NAME.fullmatch(value):
        raise ConfigError(f"host must match {HOST_NAME.pattern} (lowercase letters, digits, "
                          f"'-'; at most 32 characters), not {value!r}")
    return value


def _paths(value: object) -> tuple[Path, ...]:
    if value is None:
        raise ConfigError("paths is missing (the directories to back up)")
    paths = _strings(value, "paths")
    if not paths:
        raise ConfigError("paths is empty (list the directories to back up)")
    resolved = []
    for raw in paths:
        if not Path(raw).is_absolute():
            raise ConfigError(f"paths: {raw!r} is not an absolute path")
        resolved.append(Path(raw))
    return tuple(resolved)


def _strings(value: object, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key} must be a list of non-empty strings")
    return list(value)


def _int(data: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, not {value!r}")
    return value


def _tools(value: object, platform: str) -> Tools:
    if not isinstance(value, dict):
        raise ConfigError("[tools] must be a table of program names or paths")
    _only(value, set(TOOL_NAMES), "tools.")
    names = default_tools(platform)
    for key, tool in value.items():
        if not isinstance(tool, str) or not tool:
            raise ConfigError(f"tools.{key} must be a program name or path")
        names[key] = tool
    return Tools(**names)


def _only(data: dict[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(data) - allowed)
    if not unknown:
        return
    named = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
        named.append(prefix + key + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
    settings = "setting" if len(unknown) == 1 else "settings"
    raise ConfigError(f"unknown {settings} in host.toml: {', '.join(named)}; the settings are "
                      f"{', '.join(prefix + k for k in sorted(allowed))}")
