"""GPT-2 BPE through tiktoken: the one tokenizer of the toolkit (EOT = 50256)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

from timoe_core.errors import TimoeError

TOKENIZER_NAME = "gpt2"


@dataclass(frozen=True)
class Tokenizer:
    name: str
    vocab_size: int
    eot_token: int
    _encoding: object

    def encode(self, text: str) -> list[int]:
        """Ordinary text: special-token strings in the text are encoded as plain text."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, tokens: Sequence[int]) -> str:
        return self._encoding.decode(list(tokens))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_token": self.eot_token}


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str = TOKENIZER_NAME) -> Tokenizer:
    if name != TOKENIZER_NAME:
        raise TimoeError(f"unsupported tokenizer {name!r}: only {TOKENIZER_NAME!r} is supported")
    import tiktoken

    try:
        enc = tiktoken.get_encoding(name)
    except Exception as exc:  # network or cache failure: tiktoken raises many types
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", "(unset)")
        raise TimoeError(
            f"cannot load the {name} tokenizer ({type(exc).__name__}); offline machines must set "
            f"TIKTOKEN_CACHE_DIR to a folder holding the GPT-2 files (now: {cache})"
        ) from None
    return Tokenizer(name=name, vocab_size=enc.n_vocab, eot_token=enc.eot_token, _encoding=enc)
