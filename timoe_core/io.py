"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every output the toolkit writes (manifests, checkpoints, reports, configs) goes through
here: write to a temp file in the same folder, fsync, then `os.replace`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar, Union

from pydantic import BaseModel, ValidationError

from timoe_core.errors import TimoeError, describe_validation_error

ModelT = TypeVar("ModelT", bound=BaseModel)


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
    except OSError as exc:  # a write to a full disk names no file: name the output
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
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


def open_for_append(path: str | os.PathLike) -> TextIO:
    """A run's log file opened for appending, never through a symlink (OSError ELOOP) and
    only when it is a regular file: a link planted in a run dir must not get our lines
    appended to the file it points at."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                 | os.O_NONBLOCK, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TimoeError(f"{path} is not a regular file: move it out of the run dir")
    return os.fdopen(fd, "a", encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# A value json.dumps writes as it is (what a record file holds): read-only containers, so
# a dict[str, str] or a list[int] is one.
JSONValue = Union[str, int, float, bool, None, Sequence["JSONValue"], Mapping[str, "JSONValue"]]
# A record written as a JSON object (mixture_run.json, the log-prob cache key).
JSONObject = dict[str, JSONValue]


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


OutputKind = Literal["folder", "file"]


def _link_target(link: Path) -> Path | None:
    """Where a symlink finally leads, or None when it dangles or loops."""
    try:
        return link.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a loop, before Python 3.13
        return None


def _entry_kind(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except OSError:
        return "missing"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    return "special file (a fifo, socket or device)"


def first_entry_up(path: Path, flag: str = "--out") -> Path:
    """The first entry that exists (or is a link) on the way up from `path`; TimoeError
    when that is a link that dangles or loops (creating folders there would fail late)."""
    hit = path
    while not os.path.lexists(hit) and hit.parent != hit:
        hit = hit.parent
    if hit.is_symlink() and _link_target(hit) is None:
        raise TimoeError(
            f"{flag} {path}: {hit} is a symbolic link to {os.readlink(hit)}, which does not "
            f"exist or loops: remove the link or choose another {flag}"
        )
    return hit


def check_output_path(
    path: str | os.PathLike, flag: str = "--out", kind: OutputKind = "folder"
) -> Path:
    """The path a command writes `flag` to, checked before any work: one line naming what
    is wrong (TimoeError) instead of a traceback at the final rename, after the job ran.

    Refused: a dangling or looping symlink at the path or above it; a folder output that is
    a file, special file or a symlink to one; a file output that is a folder, a special file
    or any symlink (a symlink is never written through, nor replaced); a path under a file;
    a place this process cannot create files in. A folder output given as a symlink to an
    existing folder is that folder: the resolved path is returned, so a rename lands in it.
    Every command's output check goes through here (with check_writable_dir's probe)."""
    path = Path(path).expanduser()
    hit = first_entry_up(path, flag)
    what = _entry_kind(hit)
    if hit != path:  # the output does not exist yet: what holds it must be a folder
        if what != "folder":
            raise TimoeError(
                f"{flag} {path}: {hit} is a {what}, not a folder: choose another {flag}"
            )
        check_writable_dir(path, flag)
        return path
    if kind == "file":
        if path.is_symlink():
            raise TimoeError(
                f"{flag} {path} is a symbolic link (to {os.readlink(path)}): timoe never "
                f"writes through or replaces a link; give the real path or another {flag}"
            )
        if what != "file":
            raise TimoeError(f"{flag} {path} is a {what}, not a file: give a file name")
        check_writable_dir(path.parent, flag)
        return path
    if what != "folder":
        link = f" (a symbolic link to {os.readlink(path)})" if path.is_symlink() else ""
        raise TimoeError(
            f"{flag} {path} is a {what}{link}, not a folder: choose another {flag}"
        )
    real = path.resolve() if path.is_symlink() else path
    check_writable_dir(real, flag)
    return real


def check_writable_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """TimoeError unless `path` is a folder this process can create files in (or could
    be created): checked by creating and removing a probe file in it, or in its nearest
    existing parent, so permissions, read-only mounts and ACLs all count. Writes nothing
    that stays; call it before any work starts."""
    path = Path(path)
    probe_dir = path
    while not probe_dir.exists():
        if probe_dir.is_symlink():
            raise TimoeError(
                f"{flag} {path}: {probe_dir} is a symbolic link to "
                f"{os.readlink(probe_dir)}, which does not exist or loops: remove the link "
                f"or choose another {flag}"
            )
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


def remove_output(path: str | os.PathLike) -> None:
    """Remove an output this tool wrote (under --overwrite): a file, or a folder with its
    contents; a symlink in its place is unlinked, and what it points at is never touched
    (rmtree refuses a link, and following it would delete a user's folder)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()  # a fifo or socket where our file was


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (weights, manifests, caches)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# run.json, timoe.json, manifest.json: a few KB each; a larger one is not ours.
MAX_METADATA_BYTES = 16 << 20


def read_small_file(path: str | os.PathLike, max_bytes: int = MAX_METADATA_BYTES) -> bytes:
    """The bytes of a metadata file, refusing (TimoeError) one larger than `max_bytes`
    before reading it: a hostile or mistaken multi-GB file must not be loaded whole."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise TimoeError(
            f"{path} is {size} bytes, far more than a timoe metadata file holds "
            f"(at most {max_bytes}): it is not one of ours; restore or rebuild it"
        )
    return path.read_bytes()


def read_metadata(path: str | os.PathLike, model: type[ModelT], fix: str) -> ModelT:
    """A small JSON metadata file (timoe.json, manifest.json) validated as `model`;
    TimoeError "`path` is corrupt (what is wrong): `fix`" when it is not UTF-8 JSON or
    does not validate."""
    try:
        return model.model_validate(json.loads(read_small_file(path).decode("utf-8")))
    except (ValueError, ValidationError) as exc:  # JSON, UTF-8, a 5000-digit number
        why = describe_validation_error(exc)
        raise TimoeError(f"{path} is corrupt ({why}): {fix}") from None


def safe_loader_refusal(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a pickle, in a few words: only its
    specific reason ("Unsupported global: GLOBAL argparse.Namespace"), never torch's
    advice around it to retry with weights_only=False, which would run whatever code
    the file holds."""
    import re

    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n|$)", text)
    if m is None:
        m = re.search(r"((?:Unsupported|Trying to load unsupported).*?)(?:\.\s|\n|$)", text)
    return m.group(1).strip()[:160] if m else "it holds objects other than tensors"


def read_json_object(path: str | os.PathLike, fix: str) -> dict[str, Any]:
    """A small JSON metadata file that must hold an object (a record compared key by key
    with what a rerun would write); TimoeError "`path` is corrupt (...): `fix`" otherwise."""
    try:
        data = json.loads(read_small_file(path).decode("utf-8"))
    except ValueError as exc:  # JSON, UTF-8, a 5000-digit number
        raise TimoeError(f"{path} is corrupt ({describe_validation_error(exc)}): {fix}") from None
    if not isinstance(data, dict):
        raise TimoeError(f"{path} is corrupt (a JSON {type(data).__name__}, not an object): {fix}")
    return data


def write_failure_as_os_error(exc: BaseException, path: str | os.PathLike) -> OSError | None:
    """The OSError a failed write really was, from the exceptions libraries wrap it in:
    torch.save raises RuntimeError ("PytorchStreamWriter failed writing file"), safetensors
    a SafetensorError ("... os error 28"). None when `exc` is not a write failure."""
    import errno
    import re
    import shutil

    if isinstance(exc, OSError):
        return exc if exc.filename else OSError(exc.errno, exc.strerror or str(exc), str(path))
    text = str(exc)
    if m := re.search(r"os error (\d+)", text):
        code = int(m.group(1))
        return OSError(code, os.strerror(code), str(path))
    if not isinstance(exc, RuntimeError):
        return None
    try:  # torch does not say why ("unexpected pos", "failed writing"): look at the disk
        where = Path(path)
        while not where.exists() and where != where.parent:
            where = where.parent
        full = shutil.disk_usage(where).free < 16 << 20
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if re.search(r"PytorchStreamWriter|inline_container|fail\w* (writing|to write)", text):
        return OSError(errno.EIO, os.strerror(errno.EIO), str(path))
    return None


def check_output_files(
    outputs: dict[str, Path | None],
    inputs: dict[str, Path | None],
    looks_ours: dict[str, Callable[[Path], bool]],
) -> None:
    """TimoeError unless every output file (flag -> path) is distinct, outside every input
    (flag -> file or folder), and either absent or a file this tool wrote before
    (`looks_ours[flag]`): an output never overwrites an input, another output or a
    user's file."""
    given = {flag: Path(p).expanduser().absolute() for flag, p in outputs.items() if p}
    seen: dict[Path, str] = {}
    for flag, path in given.items():
        if path.resolve() in seen:
            raise TimoeError(
                f"{flag} {path} is also the {seen[path.resolve()]} file: give each output "
                "its own path"
            )
        seen[path.resolve()] = flag
    for flag, path in given.items():
        for in_flag, src in inputs.items():
            if src is None:
                continue
            src = Path(src).expanduser().resolve()
            if path.resolve() == src or src in path.resolve().parents:
                raise TimoeError(
                    f"{flag} {path} would overwrite the {in_flag} input {src}: write it "
                    "somewhere else"
                )
        if path.is_file() and not looks_ours[flag](path):
            raise TimoeError(
                f"{flag} {path} exists and is not a file this command wrote: refusing to "
                f"overwrite it; remove it or choose another {flag} path"
            )
