"""On-disk cache of frozen experts' target log-probs, reused across router epochs.

With frozen experts (learned-avg) the router's loss needs from expert k only
log P_k(target) at each position of a window: T numbers, not T x V. They never change
while the router trains, so each window's are computed once and read back in every
later epoch: from then on a step costs a router forward/backward and a disk read.

Layout, in the run dir:

    logprob-cache/<key digest>/
        meta.json            the key (below), shape, chunk size; "complete" once every
                             chunk is on disk
        chunk-000000.f16 ... windows [i*C, (i+1)*C) as raw fp16 (rows, T, K); -inf where
                             expert k is not eligible for the window's date

Key: the cache format, the sha256 of the token files it reads (and of no other year's),
split, years, seq_len, eligibility policy, the experts' forward precision, and
every expert's label and weights sha256. Other data, experts, seq_len, policy or
precision give another folder, and meta.json must repeat the key exactly, so a cache of
something else is never read.
Caches of other keys are removed when a new one is built.

Building: chunks are dealt to ranks round-robin; each is written to a temp file and
renamed, so an interrupted build keeps its finished chunks and a rerun, with any
number of workers, computes only the missing ones. Separate files per chunk (rather
than one file every rank writes into) keep ranks on different nodes from ever
writing to the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.io import JSONObject, atomic_path, atomic_write_json
from timoe_core.model.mixture import TiMoE
from timoe_core.model.point_in_time import Policy
from timoe_core.train.distributed import DistEnv

CACHE_DIRNAME = "logprob-cache"
META_FILENAME = "meta.json"
CACHE_FORMAT = 1
# Windows per chunk file: about this many bytes each.
CHUNK_BYTES = 64 << 20


# One token file as the cache key records it: [name, size, mtime_ns, sampled sha256]
# (a list, as JSON reads it back).
TokenFileFingerprint = list[str | int]


def cache_key(
    *,
    data_files_sha256: dict[str, str],
    split: str,
    years: list[int],
    seq_len: int,
    policy: Policy,
    experts: dict[str, str],
    compute_dtype: str = "float32",
    token_files: list[TokenFileFingerprint] | None = None,
) -> JSONObject:
    """What the cached numbers depend on; `experts` maps slice label -> weights sha256,
    `compute_dtype` is the experts' forward precision ("bfloat16" under autocast),
    `token_files` the `token_files_fingerprint` of the windows' token files."""
    return {
        "token_files": token_files or [],
        "format": CACHE_FORMAT,
        "dtype": "float16",
        "compute_dtype": compute_dtype,
        "data_files_sha256": dict(sorted(data_files_sha256.items())),
        "split": split,
        "years": sorted(years),
        "seq_len": seq_len,
        "policy": policy,
        "experts": [[label, experts[label]] for label in sorted(experts)],
    }


_SAMPLES = 16
_SAMPLE_BYTES = 1 << 16


def token_files_fingerprint(data_dir: Path, split: str, years: list[int]
                            ) -> list[TokenFileFingerprint]:
    """Per token file: [name, size, mtime_ns, sha256 of 16 evenly spread 64 KiB blocks].

    The manifest's checksums say what the files held when prepared, not what they hold
    now: a same-size edit in place keeps the manifest and the sizes, and must still not
    reuse a cache computed from the old tokens. The modification time catches any write
    through the file system; the sampled hash catches one that restored the time. Cheap:
    at most 1 MiB read per file."""
    out: list[TokenFileFingerprint] = []
    for year in sorted(years):
        path = Path(data_dir) / split / f"{year}.bin"
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            step = max(1, st.st_size // _SAMPLES)
            for offset in range(0, max(st.st_size, 1), step)[:_SAMPLES]:
                f.seek(offset)
                h.update(f.read(_SAMPLE_BYTES))
            f.seek(max(0, st.st_size - _SAMPLE_BYTES))
            h.update(f.read())
        out.append([f"{split}/{year}.bin", st.st_size, st.st_mtime_ns, h.hexdigest()])
    return out


def _digest(key: JSONObject) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class LogProbCache:
    """(windows, T, K) fp16 log P_k(target) of the frozen experts, read by window index."""

    def __init__(
        self, directory: Path, key: JSONObject, shape: tuple[int, int, int], chunk_rows: int
    ) -> None:
        self.directory = Path(directory)
        self.key = key
        self.shape = shape
        self.chunk_rows = chunk_rows
        self._chunks: dict[int, np.memmap] = {}

    # ----------------------------------------------------------------- layout

    @property
    def num_chunks(self) -> int:
        return -(-self.shape[0] // self.chunk_rows)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.shape[0])

    def chunk_path(self, chunk: int) -> Path:
        return self.directory / f"chunk-{chunk:06d}.f16"

    def _chunk_bytes(self, chunk: int) -> int:
        start, end = self.chunk_range(chunk)
        return (end - start) * self.shape[1] * self.shape[2] * 2

    def chunk_done(self, chunk: int) -> bool:
        path = self.chunk_path(chunk)
        return path.is_file() and path.stat().st_size == self._chunk_bytes(chunk)

    def _meta(self, complete: bool) -> JSONObject:
        return {
            "key": self.key,
            "shape": list(self.shape),
            "chunk_rows": self.chunk_rows,
            "complete": complete,
        }

    def is_complete(self) -> bool:
        """meta.json repeats the key and says complete, and every chunk has its size."""
        try:
            meta = json.loads((self.directory / META_FILENAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if meta != self._meta(complete=True):
            return False
        return all(self.chunk_done(c) for c in range(self.num_chunks))

    # ------------------------------------------------------------------ reading

    def _chunk(self, chunk: int) -> np.memmap:
        if chunk not in self._chunks:
            start, end = self.chunk_range(chunk)
            self._chunks[chunk] = np.memmap(
                self.chunk_path(chunk),
                dtype=np.float16,
                mode="r",
                shape=(end - start, self.shape[1], self.shape[2]),
            )
        return self._chunks[chunk]

    def read(self, indices: np.ndarray) -> torch.Tensor:
        """(len(indices), T, K) fp16 log-probs of the windows `indices`."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), self.shape[1], self.shape[2]), dtype=np.float16)
        chunk_of = idx // self.chunk_rows
        for c in np.unique(chunk_of):
            sel = chunk_of == c
            out[sel] = self._chunk(int(c))[idx[sel] - int(c) * self.chunk_rows]
        return torch.from_numpy(out)

    # ----------------------------------------------------------------- building

    @staticmethod
    def exists(run_dir: Path, key: JSONObject) -> bool:
        """A complete cache of `key` is in `run_dir` (its chunks are checked on opening)."""
        path = Path(run_dir) / CACHE_DIRNAME / _digest(key) / META_FILENAME
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and meta.get("key") == key and meta.get("complete") is True

    @classmethod
    def open_or_build(
        cls,
        run_dir: Path,
        key: JSONObject,
        windows: TokenWindows,
        mix: TiMoE,
        env: DistEnv,
        *,
        batch_size: int,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        log: Callable[[str], None] = lambda text: None,
        chunk_rows: int | None = None,
    ) -> LogProbCache:
        """The cache of `key` under `run_dir`, computing whatever is missing (every rank
        calls this; each computes its share of the chunks)."""
        root = Path(run_dir) / CACHE_DIRNAME
        T, K = windows.seq_len, len(mix.slices)
        if chunk_rows is None:
            chunk_rows = max(1, CHUNK_BYTES // (T * K * 2))
        cache = cls(root / _digest(key), key, (len(windows), T, K), chunk_rows)
        if cache.is_complete():
            log(f"log-prob cache: reusing {cache.directory}")
            return cache
        if env.is_main:
            if root.is_dir():  # caches of other data/experts: never readable again
                for old in root.iterdir():
                    if old.name != cache.directory.name:
                        shutil.rmtree(old, ignore_errors=True)
            meta_path = cache.directory / META_FILENAME
            try:
                previous = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
            if previous is not None and (not isinstance(previous, dict)
                                         or previous.get("key") != key):
                shutil.rmtree(cache.directory)  # a digest collision: start it over
            cache.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_json(meta_path, cache._meta(complete=False))
        env.barrier()
        todo = [
            c for c in range(env.rank, cache.num_chunks, env.world_size) if not cache.chunk_done(c)
        ]
        n_rows = sum(cache.chunk_range(c)[1] - cache.chunk_range(c)[0] for c in todo)
        log(
            f"log-prob cache: computing the frozen experts' target log-probs of "
            f"{len(windows)} windows ({cache.num_chunks} chunks) into {cache.directory}"
        )
        t0 = time.perf_counter()
        for c in todo:
            cache._compute_chunk(c, windows, mix, batch_size, autocast)
        done = env.sum(torch.tensor([n_rows], dtype=torch.float64, device=env.device))
        env.barrier()
        if env.is_main:
            missing = [c for c in range(cache.num_chunks) if not cache.chunk_done(c)]
            if missing:
                raise TimoeError(
                    f"log-prob cache {cache.directory} is missing chunks {missing[:5]} after "
                    "building: check that every worker writes to the same run dir"
                )
            atomic_write_json(cache.directory / META_FILENAME, cache._meta(complete=True))
        env.barrier()
        log(
            f"log-prob cache: {int(done.item())} windows computed in "
            f"{time.perf_counter() - t0:.1f}s"
        )
        return cache

    @torch.no_grad()
    def _compute_chunk(
        self,
        chunk: int,
        windows: TokenWindows,
        mix: TiMoE,
        batch_size: int,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        start, end = self.chunk_range(chunk)
        values = np.empty((end - start, self.shape[1], self.shape[2]), dtype=np.float16)
        for b0 in range(start, end, batch_size):
            idx = np.arange(b0, min(b0 + batch_size, end))
            rows, years = windows.batch(idx)
            rows = rows.to(mix.device)
            with autocast():
                lp = mix.experts_target_log_probs(rows[:, :-1], rows[:, 1:], years.tolist())
            values[b0 - start : b0 - start + len(idx)] = lp.half().cpu().numpy()
        with atomic_path(self.chunk_path(chunk)) as tmp:
            values.tofile(tmp)  # a full disk: atomic_path names the chunk in the OSError
