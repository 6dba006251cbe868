"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every output the toolkit writes (manifests, checkpoints, reports, configs) goes through
here: write to a temp file in the same folder, fsync, then `os.replace`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from timoe_core.errors import TimoeError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        chmod_default(tmp_path, 0o666)  # mkstemp makes it 0600: colleagues could not read it
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), since
    setting it to read it back races with other threads creating files."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def chmod_default(path: str | os.PathLike, mode: int) -> None:
    """Give `path` the permissions a plain open/mkdir would: `mode` less the umask
    (temp files and folders are created private)."""
    os.chmod(path, mode & ~current_umask())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """TimoeError unless `path` is a folder this process can create files in (or could
    be created): checked by creating and removing a probe file in it, or in its nearest
    existing parent, so permissions, read-only mounts and ACLs all count. Writes nothing
    that stays; call it before any work starts."""
    path = Path(path)
    probe_dir = path
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        raise TimoeError(
            f"{flag} {path}: {probe_dir} is a file, not a folder: choose another {flag}"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".timoe-write-test-", dir=probe_dir)
    except OSError as exc:
        why = exc.strerror or str(exc)
        where = "" if probe_dir == path else f" (its parent {probe_dir} does not allow it)"
        raise TimoeError(
            f"{flag} {path} is not writable{where}: {why}; choose another {flag} or fix "
            "its permissions"
        ) from None
    os.close(fd)
    os.unlink(probe)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (weights, manifests, caches)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
