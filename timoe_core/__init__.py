"""timoe_core: the library behind the `timoe` command line.

Time-aware mixtures of language experts (TiMoE, arXiv 2508.08827): one GPT expert per
time slice of a dated corpus, combined in log-probability space with every expert from
after the query date excluded.
"""

__version__ = "0.1.0"
