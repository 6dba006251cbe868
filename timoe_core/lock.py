"""One writer per output: an exclusive advisory lock beside every folder or file we write.

Every command that writes a run dir, data dir, bundle, demo dir or report takes
`output_lock(path)` first. The lock is a file `.NAME.lock` beside `path` holding the
holder's host, pid and start time, locked with `flock`; a second writer gets a
TimoeError (exit 2) naming the holder. The kernel drops a flock when its process dies,
so a lock file left by a killed run (a dead pid) is simply taken over. On a file system
without flock the pid and host in the file decide: a live pid on this host, or any
holder on another host, keeps the lock.

The lock is re-entrant within a process (a demo locks its folder and then each run dir
in it; train-router locks its --out and then writes the bundle there).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from timoe_core.errors import TimoeError
from timoe_core.io import first_entry_up

LOCK_SUFFIX = ".lock"

_held: dict[Path, int] = {}  # lock file -> depth, for this process


def lock_path(target: str | os.PathLike) -> Path:
    """Where the lock of `target` lives: `.NAME.lock` beside it."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def _holder_tag() -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{socket.gethostname()} {os.getpid()} {stamp}\n"


def _parse_holder(raw: bytes) -> tuple[str, int, str] | None:
    try:
        host, pid, *since = raw.decode("utf-8").split()
        return host, int(pid), " ".join(since)
    except (ValueError, UnicodeDecodeError):
        return None


def _read_holder(path: Path) -> tuple[str, int, str] | None:
    try:  # never through a symlink planted at the lock's path
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _parse_holder(os.read(fd, 4096)) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _busy(target: Path, lock: Path, flag: str) -> TimoeError:
    holder = _read_holder(lock)
    who = (
        f"pid {holder[1]} on host {holder[0]}" + (f" since {holder[2]}" if holder[2] else "")
        if holder
        else "another process"
    )
    return TimoeError(
        f"{flag} {target} is being written by another timoe run ({who}; lock file {lock}): "
        f"wait for it to finish, or choose another {flag}"
    )


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """Hold the exclusive write lock of `target` (a folder or file, existing or not) for
    the block; TimoeError naming the holder when another process holds it. Folders this
    creates to hold the lock file are removed again when they are left empty."""
    target = Path(target).absolute()
    lock = lock_path(target)
    if lock in _held:
        _held[lock] += 1
        try:
            yield lock
        finally:
            _held[lock] -= 1
        return
    first_entry_up(target, flag)  # a dangling link on the way: one line, not retries
    made: list[Path] = []
    parent = lock.parent
    while not parent.exists() and parent != parent.parent:
        made.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise TimoeError(
            f"{flag} {target}: {parent} is a file, not a folder: choose another {flag}"
        )
    fd = _acquire(target, lock, flag)
    _held[lock] = 1
    try:
        yield lock
    finally:
        del _held[lock]
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: a waiter re-checks the inode
        os.close(fd)
        for p in made:  # innermost first, only while empty
            try:
                p.rmdir()
            except OSError:
                break


def _open_lock_file(target: Path, lock: Path, flag: str) -> int:
    """An fd of the lock file: an existing one opened without following a symlink, or a
    new one made with O_EXCL. Anything at `lock` that is not a plain, singly-linked file
    holding a lock line is refused naming it: a symlink or hard link planted there would
    have the holder line written into someone's file, a folder would be a traceback."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    made = False
    try:
        fd = os.open(lock, flags)  # a lock file a dead holder left
    except FileNotFoundError:
        fd = os.open(lock, flags | os.O_CREAT | os.O_EXCL, 0o644)  # FileExistsError: retry
        made = True
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP):
            raise _not_a_lock_file(target, lock, flag, _kind_of(lock)) from None
        raise
    try:
        st = os.fstat(fd)
        what = None
        if not stat.S_ISREG(st.st_mode):
            what = _kind_of(lock)
        elif st.st_nlink != 1:
            what = f"a file with {st.st_nlink} hard links (a lock file has one)"
        elif not made and st.st_size and _parse_holder(os.pread(fd, 4096, 0)) is None:
            what = "a file that holds no timoe lock line"
        if what is not None:
            raise _not_a_lock_file(target, lock, flag, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind_of(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "not a regular file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _not_a_lock_file(target: Path, lock: Path, flag: str, what: str) -> TimoeError:
    return TimoeError(
        f"{flag} {target}: its lock file {lock} is {what}, not a lock file timoe made: "
        "refusing to use it; remove it (nothing it points to is touched) or choose another "
        f"{flag}"
    )


def _acquire(target: Path, lock: Path, flag: str) -> int:
    for _ in range(20):  # retried only when a holder removed or made the file under us
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = _open_lock_file(target, lock, flag)
        except (FileNotFoundError, FileExistsError):
            continue
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                raise TimoeError(
                    f"{flag} {target} is not writable (cannot create its lock file {lock}: "
                    f"{exc.strerror}): fix the permissions or choose another path"
                ) from None
            raise
        try:
            locked = _try_flock(fd, lock)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            raise _busy(target, lock, flag)
        try:  # the file we locked must still be the one at `lock` (not unlinked meanwhile)
            same = os.fstat(fd).st_ino == os.lstat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, _holder_tag().encode())
        except OSError as exc:  # a full disk: leave no empty lock file behind
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, str(lock)) from None
        return fd
    raise TimoeError(f"{flag} {target}: could not take its lock {lock}: try again")


def _try_flock(fd: int, lock: Path) -> bool:
    """True when this process now holds the lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    # No flock here (some network file systems): the pid and host in the file decide.
    holder = _read_holder(lock)
    if holder is None:
        return True
    host, pid, _ = holder
    if host == socket.gethostname() and (pid == os.getpid() or not _pid_alive(pid)):
        return True  # a dead holder's lock is taken over
    return False
