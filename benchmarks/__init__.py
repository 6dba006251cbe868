"""The benchmark suite: `python -m benchmarks [--quick] [--json FILE] [--only GROUP]`.

Every figure is measured side by side with its peer or limit in the same run; see
benchmarks/common.py for the schema and the timing rounds, docs/benchmarks.md for the
figures (written by `python -m benchmarks.report FILE.json`).
"""
