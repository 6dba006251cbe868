"""`hf:ORG/NAME[@REVISION]` model references, resolved through `huggingface_hub`.

huggingface_hub owns the cache and the offline switch: with `HF_HUB_OFFLINE=1` only
its local cache (`HF_HUB_CACHE`, default ~/.cache/huggingface/hub) is read, and a
repository missing there is a clear error saying how to fetch it. Nothing here
touches the network unless huggingface_hub itself is allowed to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from timoe_core.errors import TimoeError

HF_PREFIX = "hf:"
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_reference(spec: str | os.PathLike) -> bool:
    return str(spec).startswith(HF_PREFIX)


def parse_hub_reference(spec: str) -> tuple[str, str | None]:
    """'hf:ORG/NAME[@REVISION]' -> (repo id, revision or None)."""
    body = str(spec)[len(HF_PREFIX):].strip()
    repo, _, revision = body.partition("@")
    if not _REPO_RE.match(repo):
        raise TimoeError(
            f"model {spec!r} is not a hub reference: use hf:ORG/NAME (or hf:ORG/NAME@REVISION)"
        )
    return repo, revision or None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """A local folder for `spec`: a path as given, or the hub snapshot of `hf:ORG/NAME`."""
    if not is_hub_reference(spec):
        return Path(spec)
    repo, revision = parse_hub_reference(str(spec))
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise TimoeError(
            f"model {spec}: hf: references need huggingface_hub: pip install 'timoe[hf]'"
        ) from None
    fetch = f"`hf download {repo}" + (f" --revision {revision}`" if revision else "`")
    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=_offline()))
    except LocalEntryNotFoundError:
        raise TimoeError(
            f"model {spec} is not in the local hub cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): fetch it where "
            f"there is network with {fetch} (same HF_HUB_CACHE), or pass a local folder"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise TimoeError(
            f"model {spec}: no such repository on the hub, or it needs a login "
            "(hf auth login): check the name"
        ) from None
    except RevisionNotFoundError:
        raise TimoeError(f"model {spec}: the hub repository has no revision {revision!r}") from None
    except OSError as exc:  # network errors and the like
        raise TimoeError(
            f"model {spec} could not be fetched ({type(exc).__name__}: {exc}): fetch it with "
            f"{fetch}, or set HF_HUB_OFFLINE=1 to read only the local cache"
        ) from None
