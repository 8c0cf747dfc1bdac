"""What the changed 512 KiB blocks of a night are, and what the archive volume's file system
changes about them: `python -m bench.blocks [--size-mb N] [--variants a,b] [--json]`.

The wire bench's data set and change (bench/wire.py), its full encrypted path (rdiff-backup,
the gocryptfs `-reverse` view, the client's rsync through sshd and rrsync), pushed in each pass
to the bench's two volumes and to one more volume per variant: ext4 made or mounted another
way, or XFS. After the change each volume's image is compared with its copy from before, in
512 KiB blocks (EBS's) and in 4 KiB blocks (ext4's), and every changed 4 KiB block of an ext4
volume is attributed (bench/volumes.py): the journal, the bitmaps and inode tables, the
superblocks and group descriptors (dumpe2fs, debugfs), or the file that owns it (debugfs icheck
and ncheck), named by what it is in the repository. gocryptfs' reverse view passes the
repository's inode numbers through, which maps each ciphertext name to its plaintext one.

Everything is removed at the end, as bench/wire does. See bench/README.md, "What the changed
blocks are".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

# mypy cannot follow setuptools' editable-install finder to offsite_host (see bench/sessions.py)
from offsite_host.session import Session  # type: ignore[import-not-found, unused-ignore]

from bench import volumes as vol
from bench.wire import (
    SEED,
    Bench,
    Sent,
    Shape,
    apply_changes,
    generate,
    table,
    volume_mib,
    workspace,
)

_LAZY_OFF = "lazy_itable_init=0,lazy_journal_init=0"
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "ext4 no journal": ((*vol.MKFS, "-O", "^has_journal"), vol.MOUNT_OPTIONS),
    "ext4 4 MiB journal": ((*vol.MKFS, "-J", "size=4"), vol.MOUNT_OPTIONS),
    "ext4 packed_meta_blocks": ((*vol.MKFS[:-1], f"{_LAZY_OFF},packed_meta_blocks=1"),
                                 vol.MOUNT_OPTIONS),
    "ext4 no flex_bg": ((*vol.MKFS, "-O", "^flex_bg"), vol.MOUNT_OPTIONS),
    "ext4 -i 32768": ((*vol.MKFS, "-i", "32768"), vol.MOUNT_OPTIONS),
    "ext4 commit=600": (vol.MKFS, f"{vol.MOUNT_OPTIONS},commit=600"),
    "ext4 data=writeback": (vol.MKFS, f"{vol.MOUNT_OPTIONS},data=writeback"),
    "ext4 nodelalloc": (vol.MKFS, f"{vol.MOUNT_OPTIONS},nodelalloc"),
    "xfs": (("mkfs.xfs", "-q", "-f"), vol.MOUNT_OPTIONS),
}
TODAY = "encrypted"  # bench/wire's volume, made as boot.sh makes one


class FanOut(Bench):
    """The bench, its encrypted push sent again to each variant's volume."""

    def __init__(self, *args: Any, remote_paths: Sequence[str]) -> None:
        super().__init__(*args)
        self.remote_paths = remote_paths

    def _rsync(self, source: Path, session: Session) -> Sent:
        sent = super()._rsync(source, session)
        if session.remote_path == "encrypted/":
            pushed = self.pushed  # the run's check lists what the bench's own push sent
            for path in self.remote_paths:
                super()._rsync(source, replace(session, remote_path=path))
            self.pushed = pushed
        return sent


def _slug(name: str) -> str:
    return "v-" + "".join(c if c.isalnum() else "-" for c in name)


def measure(size_mb: float, variants: Sequence[str]) -> dict[str, Any]:
    with contextlib.ExitStack() as cleanup:
        work, archive = workspace(cleanup, "blocks")
        volumes = archive.attach_volumes(cleanup, volume_mib(size_mb))
        for name in variants:
            mkfs, options = VARIANTS[name]
            volume = vol.LoopVolume(work / "images" / f"{_slug(name)}.img",
                                    archive.volume / _slug(name), volume_mib(size_mb), mkfs=mkfs,
                                    mount_options=options)
            volume.attach(cleanup)
            with contextlib.suppress(FileNotFoundError):
                (volume.mount / "lost+found").rmdir()
            os.chown(volume.mount, archive.uid, 0)
            volume.mount.chmod(0o700)
            volumes[name] = volume
        bench = FanOut(work, archive, True, remote_paths=[f"{_slug(n)}/" for n in variants])
        data = generate(bench.source, Shape.of(size_mb))
        bench.initialise()
        bench.run_pass()
        before = {}
        for name, volume in volumes.items():
            volume.copy_image(work / "images" / f"{_slug(name)}-before.img")
            before[name] = _inodes(volume.mount)
        apply_changes(bench.source, data, SEED + 1)
        plaintext: dict[str, str] = {}
        change = bench.run_pass(lambda view: plaintext.update(_names(view, bench.repository)))
        assert archive.process is not None
        result: dict[str, Any] = {"sent": {"encrypted": change.encrypted.bytes_sent,
                                           "plain": change.plain.bytes_sent}, "volumes": {},
                                  "work": str(work), "account": archive.user,
                                  "sshd_pid": archive.process.pid}
        for name, volume in volumes.items():
            names = {} if name == "plain" else plaintext
            result["volumes"][name] = _attribute(volume, work / "images" /
                                                 f"{_slug(name)}-before.img", before[name], names)
        return result
    raise AssertionError("unreachable")


def _inodes(root: Path) -> dict[str, int]:
    """Each path under `root` (relative) and its inode number."""
    return {str(Path(d, n).relative_to(root)): os.lstat(Path(d, n)).st_ino
            for d, dirs, files in os.walk(root) for n in dirs + files}


def _names(view: Path, repository: Path) -> dict[str, str]:
    """Each ciphertext path of the view and the plaintext path it shows, by inode number."""
    by_inode = {ino: rel for rel, ino in _inodes(repository).items()}
    return {rel: by_inode.get(ino, "") for rel, ino in _inodes(view).items()}


def _attribute(volume: vol.LoopVolume, before: Path, inodes: dict[str, int],
               plaintext: dict[str, str]) -> dict[str, Any]:
    with volume.frozen():
        entry: dict[str, Any] = {"changed_bytes": vol.changed_bytes(before, volume.image)}
        if volume.mkfs[0] != "mkfs.ext4":
            return entry
        changed = vol.changed_fs_blocks(before, volume.image)
        classes: dict[int, str] = vol.ext4_metadata(volume.image)
        owners = vol.block_owners(volume.image, [b for b in changed if b not in classes])
        for block, path in owners.items():
            classes[block] = file_class(path.lstrip("/"), volume.mount, inodes, plaintext)
        entry["fs_blocks_changed"] = len(changed)
        entry["classes"] = vol.attribute(changed, classes)
        return entry


def file_class(rel: str, mount: Path, before: dict[str, int], plaintext: dict[str, str]) -> str:
    """What a changed file block belongs to: directories, or a file that existed before the
    change (same path, same inode: written in place) or a new one, and where it is."""
    try:
        status = os.lstat(mount / rel)
    except OSError:
        return f"deleted since: {rel}"
    if stat.S_ISDIR(status.st_mode):
        return "directories"
    age = "file rewritten in place" if before.get(rel) == status.st_ino else "new file"
    if not plaintext:
        return f"{age}: the data set"
    name = "/" + plaintext.get(rel, "")
    if rel.endswith("gocryptfs.diriv"):
        return f"{age}: gocryptfs.diriv (new directories)"
    if "/rdiff-backup-data/increments" in name:
        return f"{age}: rdiff-backup increments"
    if "/rdiff-backup-data" in name:
        return f"{age}: rdiff-backup metadata"
    return f"{age}: the data set's mirror" if name != "/" else f"{age}: unmapped"


def report(result: dict[str, Any]) -> str:
    plain_sent = result["sent"]["plain"]
    volumes = result["volumes"]
    rows = [[name, f"{v['changed_bytes'] // vol.EBS_BLOCK}", f"{v['changed_bytes']:,}",
             f"{v['changed_bytes'] / plain_sent:.2f}"] for name, v in volumes.items()]
    out = [f"bytes sent for the change: encrypted path {result['sent']['encrypted']:,}, plain "
           f"rsync {plain_sent:,}", "",
           table(["volume", "512 KiB blocks", "bytes", "/ plain rsync's bytes sent"], rows)]
    for name in (TODAY, "plain"):
        classes = volumes[name]["classes"]
        out += ["", f"{name}: what the changed blocks are ({volumes[name]['fs_blocks_changed']} "
                "changed 4 KiB blocks)", "",
                table(["class", "4 KiB blocks", "512 KiB blocks touched", "touched alone"],
                      [[k, *map(str, v)] for k, v in classes.items()])]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.blocks", description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=float, default=200.0,
                   help="data set size (default 200; XFS needs volumes of 300 MB and more)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants: {unknown}")
    missing = [v for v in variants if shutil.which(VARIANTS[v][0][0]) is None]
    if missing:  # mkfs.xfs: Debian's xfsprogs
        print(f"left out, their mkfs is not installed: {', '.join(missing)}", file=sys.stderr)
        variants = [v for v in variants if v not in missing]
    result = measure(args.size_mb, variants)
    print(json.dumps(result, indent=1) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
