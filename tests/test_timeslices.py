from datetime import date

import pytest

from timoe_core.errors import TimoeError
from timoe_core.model.point_in_time import eligible_slices, first_eligible_date
from timoe_core.timeslices import (
    CUTOFF_EVERY,
    TimeSlice,
    TimeSlicing,
    parse_query_date,
    period_end,
    period_ends,
)


def test_default_slicing_has_six_two_year_slices():
    s = TimeSlicing()
    assert [x.label for x in s.slices] == [
        "2013-2014", "2015-2016", "2017-2018", "2019-2020", "2021-2022", "2023-2024",
    ]
    assert s.slice_for_year(2013).label == "2013-2014"  # first year of first slice
    assert s.slice_for_year(2017).label == "2017-2018"
    assert s.slice_for_year(2024).label == "2023-2024"  # last year of last slice


def test_odd_width_truncates_the_last_slice():
    s = TimeSlicing(2013, 2024, 5)
    assert [x.label for x in s.slices] == ["2013-2017", "2018-2022", "2023-2024"]
    assert TimeSlicing(2013, 2015, 1).slices[-1].label == "2015"
    assert TimeSlicing(2013, 2013, 3).slices == [TimeSlice(2013, 2013)]


@pytest.mark.parametrize("year", [2012, 2025, 1999])
def test_year_outside_range_is_a_clear_error(year):
    with pytest.raises(TimoeError, match="outside the slicing 2013-2024"):
        TimeSlicing().slice_for_year(year)


def test_bad_slicings_are_refused():
    with pytest.raises(TimoeError, match="slice-years"):
        TimeSlicing(2013, 2024, 0)
    with pytest.raises(TimoeError, match="after --end-year"):
        TimeSlicing(2024, 2013, 2)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2016", date(2016, 12, 31)),
        ("2016-06", date(2016, 6, 30)),
        ("2016-02", date(2016, 2, 29)),  # leap year
        ("2016-06-01", date(2016, 6, 1)),
        (2016, date(2016, 12, 31)),
    ],
)
def test_query_dates_mean_the_end_of_the_period(text, expected):
    assert parse_query_date(text) == expected


@pytest.mark.parametrize("text", ["16", "2016-13", "2015-02-29", "yesterday", "2016/06"])
def test_bad_query_dates(text):
    with pytest.raises(TimoeError, match="bad query date"):
        parse_query_date(text)


def test_inclusive_policy_admits_a_slice_that_has_started():
    slices = TimeSlicing().slices
    labels = [s.label for s in eligible_slices(slices, "2016", "inclusive")]
    assert labels == ["2013-2014", "2015-2016"]
    # 2017-01-01 is the first day of 2017-2018: inclusive admits it.
    assert [s.label for s in eligible_slices(slices, "2017-01-01", "inclusive")][-1] == "2017-2018"
    assert [s.label for s in eligible_slices(slices, "2015", "inclusive")] == ["2013-2014", "2015-2016"]


def test_strict_policy_admits_only_finished_slices():
    slices = TimeSlicing().slices
    assert [s.label for s in eligible_slices(slices, "2016", "strict")] == [
        "2013-2014", "2015-2016",
    ]
    assert [s.label for s in eligible_slices(slices, "2016-06", "strict")] == ["2013-2014"]
    assert [s.label for s in eligible_slices(slices, "2014-12-31", "strict")] == ["2013-2014"]


def test_no_eligible_expert_names_the_first_usable_date():
    slices = TimeSlicing().slices
    with pytest.raises(TimoeError, match="2013-01-01"):
        eligible_slices(slices, "2012", "inclusive")
    with pytest.raises(TimoeError, match="2014-12-31"):
        eligible_slices(slices, "2014-06", "strict")
    assert first_eligible_date(slices[2:], "inclusive") == date(2017, 1, 1)


def test_missing_slices_are_never_eligible():
    present = [TimeSlice(2013, 2014), TimeSlice(2017, 2018)]
    assert [s.label for s in eligible_slices(present, "2018", "inclusive")] == ["2013-2014", "2017-2018"]


def test_slice_labels_round_trip():
    for s in TimeSlicing(2013, 2024, 3).slices + [TimeSlice(2020, 2020)]:
        assert TimeSlice.from_label(s.label) == s


def test_point_in_time_takes_per_slice_the_latest_artefact_with_cutoff_on_or_before():
    from timoe_core.model.expert_pool import ExpertRecord
    from timoe_core.model.gpt import GPTConfig
    from timoe_core.model.point_in_time import select_artefacts
    from timoe_core.model.run_info import RunInfo

    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=8)

    def rec(label, cutoff, generation=0):
        s = TimeSlice.from_label(label)
        info = RunInfo(kind="expert", slice_label=label, start_date=s.start.isoformat(),
                       end_date=s.end.isoformat(), model_config_=cfg, tokenizer={})
        return ExpertRecord(info, [], None, data_cutoff=date.fromisoformat(cutoff),
                            generation=generation)

    pool = [rec("2013-2014", "2013-12-31"), rec("2013-2014", "2014-12-31"),
            rec("2013-2014", "2014-12-31", 1), rec("2015-2016", "2015-12-31"),
            rec("2015-2016", "2016-12-31")]

    def keys(when, policy):
        return [r.key for r in select_artefacts(pool, date.fromisoformat(when), policy)]

    assert keys("2013-06-30", "point-in-time") == []
    assert keys("2014-06-30", "point-in-time") == ["2013-2014@2013-12-31"]
    assert keys("2015-12-31", "strict") == ["2013-2014@2014-12-31+adapted",
                                             "2015-2016@2015-12-31"]
    # The paper's rule: a started slice answers with its final artefact (it read 2016).
    assert keys("2015-12-31", "inclusive") == ["2013-2014@2014-12-31+adapted",
                                                "2015-2016@2016-12-31"]
    with pytest.raises(TimoeError, match="unknown eligibility policy"):
        select_artefacts(pool, date(2016, 1, 1), "lenient")


@pytest.mark.parametrize(
    "day, every, end",
    [
        (date(2016, 2, 3), "month", date(2016, 2, 29)),  # leap year
        (date(2015, 2, 28), "month", date(2015, 2, 28)),  # a period end is its own end
        (date(2016, 7, 15), "month", date(2016, 7, 31)),
        (date(2016, 7, 15), "quarter", date(2016, 9, 30)),
        (date(2016, 1, 1), "quarter", date(2016, 3, 31)),
        (date(2016, 12, 31), "quarter", date(2016, 12, 31)),
        (date(2016, 7, 15), "year", date(2016, 12, 31)),
        (date(2016, 1, 1), "year", date(2016, 12, 31)),
    ],
)
def test_period_end_is_the_last_day_of_the_period(day, every, end):
    assert period_end(day, every) == end


def test_period_ends_cover_the_range_one_per_period():
    months = period_ends(date(2015, 1, 1), date(2016, 12, 31), "month")
    assert len(months) == 24 and months[0] == date(2015, 1, 31)
    assert months[13] == date(2016, 2, 29) and months[-1] == date(2016, 12, 31)
    assert all(a < b for a, b in zip(months, months[1:]))
    assert period_ends(date(2015, 1, 1), date(2016, 12, 31), "quarter") == [
        date(y, m, d) for y in (2015, 2016) for m, d in ((3, 31), (6, 30), (9, 30), (12, 31))
    ]
    assert period_ends(date(2013, 1, 1), date(2024, 12, 31), "year") == [
        date(y, 12, 31) for y in range(2013, 2025)
    ]
    # a range cut mid-period still ends with that period's end (its cutoff)
    assert period_ends(date(2016, 6, 10), date(2016, 7, 15), "month") == [
        date(2016, 6, 30), date(2016, 7, 31)
    ]
    assert period_ends(date(2016, 7, 16), date(2016, 7, 15), "month") == []
    assert set(CUTOFF_EVERY) == {"month", "quarter", "year"}
