"""95% intervals of the figures users see, and the demo's claim tested on them."""

from __future__ import annotations

import math

import pytest

from timoe_core.demo import headline, leak_verdict, verdict_line
from timoe_core.evaluate.compare import compare_table
from timoe_core.evaluate.intervals import (
    mean_log_interval,
    mean_perplexity_interval,
    newcombe_difference,
    wilson_interval,
)
from timoe_core.evaluate.report import rate_cell


def test_wilson_matches_published_values():
    # Newcombe (1998), table I: 81/263 -> 0.2553-0.3662; 0/20 -> 0-0.1611; 1/29 -> 0.0061-0.1718
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (0, 20): (0.0, 0.1611),
                             (1, 29): (0.0061, 0.1718)}.items():
        got = wilson_interval(k, n)
        assert got == pytest.approx((lo, hi), abs=5e-5), (k, n, got)
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(0, 0) is None


def test_newcombe_difference_matches_published_values():
    # Newcombe (1998) method 10: 56/70 - 48/80 -> 0.0524 to 0.3339; 9/10 - 3/10 -> 0.1705 to 0.8090
    assert newcombe_difference(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert newcombe_difference(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=5e-5)


def test_perplexity_intervals_cover_the_point_estimate():
    nlls = [1.0, 1.2, 0.9, 1.1]
    lo, hi = mean_log_interval(nlls)
    assert lo < math.exp(1.05) < hi
    # t with 3 degrees of freedom: 3.182 * sd / 2
    sd = math.sqrt(sum((v - 1.05) ** 2 for v in nlls) / 3)
    assert hi == pytest.approx(math.exp(1.05 + 3.182 * sd / 2))
    assert mean_log_interval([1.0]) is None
    lo, hi = mean_perplexity_interval([4.0, 6.0], [0.1, 0.05])
    se = math.sqrt(0.4 ** 2 + 0.3 ** 2) / 2
    assert (lo, hi) == pytest.approx((5.0 - 1.959964 * se, 5.0 + 1.959964 * se), abs=1e-5)
    assert mean_perplexity_interval([4.0], [None]) is None


def test_rate_cell_carries_count_and_interval():
    assert rate_cell(302, 732) == "41.3% (302/732) [37.7, 44.9]"
    assert rate_cell(None, 0) == "—"


def _qa(n: int, correct: int, past: int, future: int) -> dict:
    counts = {"correct": correct, "past": past, "future": future,
              "irrelevant": n - correct - past - future}
    return {"n": n, "accuracy": correct / n, "accuracy_norm": correct / n,
            "error_rates": {k: v / n for k, v in counts.items() if k != "correct"},
            "counts": counts}


def _result(n: int, future_timoe: int, future_dense: int) -> dict:
    def model(label, strategy, pit, future):
        return {"label": label, "strategy": strategy, "point_in_time": pit,
                "tsqa": _qa(n, n // 3, n // 3, future), "perplexity": {"2013": 5.0},
                "perplexity_mean": 5.0, "perplexity_mean_interval": [4.5, 5.5]}
    return {"data": "d", "tsqa_source": "builtin", "common_years": ["2013"], "models": [
        model("TiMoE avg", "avg", True, future_timoe),
        model("TiMoE learned-avg", "learned-avg", True, future_timoe),
        model("dense (all years)", "dense", False, future_dense)]}


def test_the_claim_is_printed_only_when_the_intervals_support_it():
    # the quick demo's old figures: 2 against 5 of 48 questions is noise
    noisy = headline(_result(48, 2, 5))
    assert noisy["leak_verdict"] == "within-noise"
    assert noisy["timoe_leaks_less_than_dense"] is False
    assert "within noise at 48 questions" in noisy["claim"]
    assert "every TiMoE strategy leaks fewer" not in noisy["claim"]
    d = noisy["future_error_differences"]["TiMoE avg"]
    assert d["interval"][0] < 0 < d["interval"][1]
    # the full demo's: 1.2-2.0% against 16.7% of 732 questions is not
    clear = headline(_result(732, 15, 122))
    assert clear["leak_verdict"] == "fewer" and clear["timoe_leaks_less_than_dense"] is True
    assert clear["claim"].startswith("every TiMoE strategy leaks fewer future answers")
    assert all(d["interval"][0] > 0 for d in clear["future_error_differences"].values())
    # and a TiMoE that leaks more, outside noise, is said so
    assert leak_verdict((10, 700), {"a": (60, 700)})[0] == "more"
    assert "leaks more" in verdict_line("more", 700)


def test_the_leaky_dense_perplexity_sits_in_its_own_labelled_row():
    headers, rows = compare_table(_result(48, 2, 5), per_year=False)
    assert headers == ["", "TiMoE avg", "TiMoE learned-avg", "dense (all years)"]
    by_label = {r[0]: r[1:] for r in rows}
    pit = by_label["ppl, mean of 1 years [95% CI], point-in-time"]
    leaky = by_label["ppl, mean of 1 years [95% CI], NOT point-in-time (read later years)"]
    assert pit == ["5.00 [4.50, 5.50]", "5.00 [4.50, 5.50]", ""]
    assert leaky == ["", "", "5.00 [4.50, 5.50]"]
    assert by_label["future err"][0] == "4.2% (2/48) [1.2, 14.0]"
    assert not any(r[0].startswith("ppl 2013") for r in rows)
