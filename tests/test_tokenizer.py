"""The GPT-2 tokenizer is built from the files shipped in the package: no network, no
TIKTOKEN_CACHE_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from timoe_core import tokenizer as tk

SAMPLE = "Hello world!  It's 2016's\n\n  new café 😀 <|endoftext|> 12345\t\tx   "


def test_packaged_tokenizer_encodes_like_gpt2():
    tok = tk.get_tokenizer()
    assert (tok.vocab_size, tok.eot_token) == (50257, 50256)
    # Known GPT-2 ids (also what tiktoken's own gpt2 gives; checked below when cached).
    assert tok.encode("Hello world!") == [15496, 995, 0]
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.encode("<|endoftext|>") != [50256]  # special text in documents stays text


def test_packaged_tokenizer_equals_tiktokens_gpt2_when_cached():
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        pytest.skip("no tiktoken cache to compare with")
    import tiktoken

    ref = tiktoken.get_encoding("gpt2")
    assert ref._mergeable_ranks == tk.gpt2_mergeable_ranks()
    assert ref._pat_str == tk._GPT2_PATTERN
    assert tk.get_tokenizer().encode(SAMPLE) == ref.encode_ordinary(SAMPLE)


def test_tokenizer_needs_no_cache_dir_or_network(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    # An empty cache and unreachable proxies: a download attempt would fail loudly.
    env.update(TIKTOKEN_CACHE_DIR=str(tmp_path), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", PYTHONPATH=str(Path(__file__).parents[1]))
    code = "from timoe_core.tokenizer import get_tokenizer; print(get_tokenizer().encode('Hi'))"
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[17250]"
    assert list(tmp_path.iterdir()) == []


def test_damaged_packaged_file_is_refused(tmp_path: Path, monkeypatch):
    for name in (tk.MERGES_FILENAME, tk.ENCODER_FILENAME):
        (tmp_path / name).write_bytes((tk.GPT2_FILES_DIR / name).read_bytes())
    (tmp_path / tk.MERGES_FILENAME).write_bytes(b"#version: 0.2\nx y\n")
    monkeypatch.setattr(tk, "GPT2_FILES_DIR", tmp_path)
    with pytest.raises(tk.TimoeError, match="damaged.*reinstall"):
        tk.gpt2_mergeable_ranks()
