"""Where a data dir is written, atomically: `--out` is checked before any work, everything
goes into a hidden staging folder beside it (`.NAME.partial-XXXX`), `manifest.json` last,
and the folder is renamed into place only when complete. With `--overwrite` the old
folder is replaced only after the new one is complete. A killed run leaves at most a
staging folder, never a manifest that describes incomplete files; a rerun removes the
staging folders of killed runs for the same `--out` (on this host: each records its
writer's pid)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from timoe_core.config import CONFIG_FILENAME, PrepareDataConfig, save_config
from timoe_core.data.manifest import MANIFEST_FILENAME, Manifest
from timoe_core.data.token_files import Outputs
from timoe_core.errors import TimoeError
from timoe_core.io import atomic_write_json, check_output_path, check_writable_dir, chmod_default


def required_out(out: Path | None) -> Path:
    """--out as given; TimoeError when it was not."""
    if out is None:
        raise TimoeError("--out is required: the folder to write the prepared data into")
    return out


def check_out_dir(out: Path | None, overwrite: bool) -> Path:
    """Refuse an output folder we must not write (before any work is done)."""
    out = check_output_path(required_out(out), "--out")  # a link to a folder: that folder
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise TimoeError(
                f"--out {out} exists and is not empty: pass --overwrite to replace it, "
                "or choose another folder"
            )
        if not (out / MANIFEST_FILENAME).is_file():
            raise TimoeError(
                f"--out {out} is not empty and is not a prepared data dir (no "
                f"{MANIFEST_FILENAME}): refusing to replace it even with --overwrite"
            )
        foreign = _not_written_by_prepare_data(out)
        if foreign:
            raise TimoeError(
                f"--out {out} holds {foreign[0]}, which prepare-data did not write "
                f"({len(foreign)} such entries): refusing to replace the folder even with "
                "--overwrite; move them out or choose another --out"
            )
    # The staging folder goes beside --out: that is where we must be able to write.
    check_writable_dir(out.absolute().parent if out.exists() else out, "--out")
    return out


def _not_written_by_prepare_data(out: Path) -> list[Path]:
    """What --overwrite would delete that is not ours: anything but manifest.json,
    config.yaml and train|val/YEAR.bin (a run dir someone put inside, notes...)."""
    ours_top = {MANIFEST_FILENAME, CONFIG_FILENAME}
    foreign = []
    for p in sorted(out.iterdir()):
        if p.name in ours_top and p.is_file():
            continue
        if p.name in ("train", "val") and p.is_dir() and not p.is_symlink():
            foreign += [q for q in sorted(p.iterdir())
                        if not (q.is_file() and re.fullmatch(r"\d{1,4}\.(bin|idx)", q.name))]
            continue
        foreign.append(p)
    return foreign


class Staging:
    """A hidden folder beside `out`; renamed onto it only when complete."""

    def __init__(self, out: Path, overwrite: bool) -> None:
        self.out = out
        self.overwrite = overwrite
        self._made_parents: list[Path] = []
        parent = out.absolute().parent
        while not parent.exists():
            self._made_parents.append(parent)
            parent = parent.parent
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(out)
        self.path = Path(
            tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.absolute().parent)
        )
        chmod_default(self.path, 0o777)  # mkdtemp makes it 0700
        (self.path / _OWNER_FILENAME).write_text(owner_tag(), encoding="utf-8")

    def commit(self) -> None:
        out = self.out
        check_out_dir(out, self.overwrite)  # again: something may have appeared meanwhile
        (self.path / _OWNER_FILENAME).unlink(missing_ok=True)
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
            os.replace(out, old)  # replaces the empty folder mkdtemp made
            os.rename(self.path, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(self.path, out)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        for p in self._made_parents:  # innermost first; only while empty
            try:
                p.rmdir()
            except OSError:
                break


def raise_naming_the_path(exc: BaseException, out: Path) -> None:
    """A write error of a file object (a full disk on flush) carries no file name: name
    the output it was writing, so the one-line message says where."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from None


# Who writes a staging folder (host and pid), so a rerun can tell a folder left by a
# killed run (its process is gone) from one another run is still writing.
_OWNER_FILENAME = ".owner"


def owner_tag() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_abandoned_staging(out: Path) -> None:
    """Remove the staging folders of killed runs for the same --out on this host."""
    host = socket.gethostname()
    for p in out.absolute().parent.glob(f".{out.name}.partial-*"):
        try:
            owner_host, pid = (p / _OWNER_FILENAME).read_text(encoding="utf-8").split()
        except (OSError, ValueError):
            continue  # not ours to judge (another version, or a folder being created)
        if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def finish_data_dir(
    staging: Staging, outputs: Outputs, cfg: PrepareDataConfig, manifest: Manifest
) -> Manifest:
    manifest.files = outputs.close()
    chmod_default(save_config(cfg, staging.path), 0o666)
    manifest_path = staging.path / MANIFEST_FILENAME
    atomic_write_json(manifest_path, manifest.model_dump(mode="json"))  # last
    chmod_default(manifest_path, 0o666)
    staging.commit()
    return manifest
