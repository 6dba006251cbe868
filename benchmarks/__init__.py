"""The benchmark suite: `python -m benchmarks [--quick] [--json FILE] [--only GROUP]`.

Every figure is measured side by side with its peer or limit in the same run; see
benchmarks/common.py for the schema and the timing rounds, docs/benchmarks.md for the
figures (written by `python -m benchmarks.report FILE.json`).
"""

import os
from pathlib import Path

# The GPT-2 tokenizer files for offline machines, as tests/conftest.py does.
_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_CACHE)
