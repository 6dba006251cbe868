"""GPT-2 BPE through tiktoken: the one tokenizer of the toolkit (EOT = 50256).

The GPT-2 files (`vocab.bpe`, the merges, and `encoder.json`, the token ids; OpenAI's
published files, 1.4 MB) ship inside the package under `timoe_core/assets/gpt2/`, and
the tiktoken encoding is built from them: no command needs the network or
`TIKTOKEN_CACHE_DIR`. The same two files are the Hugging Face tokenizer's `merges.txt`
and `vocab.json` (`timoe export --format hf` copies them).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from timoe_core.errors import TimoeError

if TYPE_CHECKING:  # tiktoken and numpy load on first use, not when the CLI starts
    import numpy as np
    import numpy.typing as npt
    import tiktoken

TOKENIZER_NAME = "gpt2"
GPT2_FILES_DIR = Path(__file__).resolve().parent / "assets" / "gpt2"
MERGES_FILENAME = "vocab.bpe"
ENCODER_FILENAME = "encoder.json"
# The published files' checksums (the ones tiktoken checks its downloads against).
_SHA256 = {
    MERGES_FILENAME: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ENCODER_FILENAME: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
EOT_TEXT = "<|endoftext|>"
# GPT-2's pre-tokenisation pattern (tiktoken's r50k/gpt2).
_GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


@dataclass(frozen=True)
class Tokenizer:
    name: str
    vocab_size: int
    eot_token: int
    _encoding: tiktoken.Encoding

    def encode(self, text: str) -> list[int]:
        """Ordinary text: special-token strings in the text are encoded as plain text."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def encode_to_numpy(self, text: str) -> npt.NDArray[np.uint32]:
        """`encode` as one uint32 buffer, no Python int per token (prepare-data's encoder).
        With no disallowed specials it encodes special-token strings as plain text, as
        `encode` does; lone surrogates raise UnicodeEncodeError (the caller replaces them)."""
        return self._encoding.encode_to_numpy(text, disallowed_special=())

    def decode(self, tokens: Sequence[int]) -> str:
        return self._encoding.decode(list(tokens))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_token": self.eot_token}


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str = TOKENIZER_NAME) -> Tokenizer:
    if name != TOKENIZER_NAME:
        raise TimoeError(f"unsupported tokenizer {name!r}: only {TOKENIZER_NAME!r} is supported")
    import tiktoken

    ranks = gpt2_mergeable_ranks()
    enc = tiktoken.Encoding(
        name=name, pat_str=_GPT2_PATTERN, mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: len(ranks)}, explicit_n_vocab=len(ranks) + 1,
    )
    return Tokenizer(name=name, vocab_size=enc.n_vocab, eot_token=enc.eot_token, _encoding=enc)


def _packaged_file(filename: str) -> bytes:
    path = GPT2_FILES_DIR / filename
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TimoeError(f"the packaged GPT-2 file {path} cannot be read ({exc.strerror}): "
                         "reinstall timoe") from None
    if hashlib.sha256(data).hexdigest() != _SHA256[filename]:
        raise TimoeError(f"the packaged GPT-2 file {path} is damaged (checksum): reinstall timoe")
    return data


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's files write each byte as one printable character: printable Latin-1
    bytes stand for themselves, the other 68 are mapped to U+0100 onwards in order."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    alphabet = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in alphabet.values():
            alphabet[chr(256 + extra)] = b
            extra += 1
    return alphabet


def gpt2_mergeable_ranks() -> dict[bytes, int]:
    """Token bytes -> id, from the packaged merges, checked against encoder.json."""
    alphabet = _gpt2_byte_alphabet()

    def to_bytes(word: str) -> bytes:
        return bytes(alphabet[ch] for ch in word)

    # Single bytes first (in the files' character order), then one token per merge.
    ranks = {bytes([b]): i for i, b in enumerate(alphabet.values())}
    merges = _packaged_file(MERGES_FILENAME).decode("utf-8").split("\n")[1:]
    for line in merges:
        if line.strip():
            first, second = line.split()
            ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    encoder = json.loads(_packaged_file(ENCODER_FILENAME))
    expected = {to_bytes(k): v for k, v in encoder.items() if k != EOT_TEXT}
    if ranks != expected:
        raise TimoeError(f"the packaged GPT-2 files in {GPT2_FILES_DIR} disagree: reinstall timoe")
    return ranks
