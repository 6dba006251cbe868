"""When a document was written: `parse_date` reads a source's date value as microseconds
since the Unix epoch, UTC.

Dates: a year (`2019`, `"2019"`), an ISO date or timestamp (`2019-04-01`, `2019-04`,
`2019/04/01`, `2019-04-01T10:00:00Z`, with or without an offset), a unix timestamp in
seconds (or milliseconds when above 1e11), an RFC 2822 date, a Common Crawl dump name
(`CC-MAIN-2017-13`: the last day, Sunday, of ISO week 13 of 2017, the latest day the
crawl can hold), or a `datetime`/`date` object.
One rule for time zones: a timestamp's date is its UTC date (an offset is converted to
UTC; a timestamp without one is taken as UTC). A value that names a period rather than
an instant (a year, a month, a day) stands for the last moment of that period, as
`--until` has always read a year (text dated 2015 may be from 2015-12-31).
"""

from __future__ import annotations

import calendar
import email.utils
import functools
import math
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any


class DateError(ValueError):
    """A date value that names no year."""


_CC_DUMP_RE = re.compile(r"CC-MAIN-(\d{4})-(\d{2})")
_YEAR_RE = re.compile(r"[+]?\d{4}")
_NUMBER_RE = re.compile(r"[+-]?\d+(?:\.\d*)?")
_ISO_RE = re.compile(  # a date alone (a time of day is _ISO_FULL_RE's)
    r"(\d{4})(?:[-/](\d{1,2})(?:[-/](\d{1,2}))?)?"  # date
    r"(?:\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?))?"  # offset (a date's date is itself)
)


# A bare number is a year (1-9999), a compact ISO date (20190401) or a Unix timestamp
# in seconds or milliseconds from this value on (1973-03-03): below it a number is
# ambiguous (12345 s is 1970, surely not what was meant) and is refused, never read as
# 1970.
_MIN_TIMESTAMP = 1e8


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def _utc_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of a datetime; naive means UTC (the one rule)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _ONE_US


def _end_of_period(year: int, month: int | None = None, day: int | None = None) -> int:
    """The last microsecond (UTC) of a year, a month or a day; ValueError for no such day."""
    month_ = 12 if month is None else month
    day_ = calendar.monthrange(year, month_)[1] if day is None else day
    return _utc_us(datetime(year, month_, day_)) + 86_400_000_000 - 1


def _time_from_timestamp(ts: float) -> int:
    if not math.isfinite(ts):
        raise DateError("not a finite number")
    if abs(ts) > 1e11:  # milliseconds: 1e11 s would be the year 5138
        ts /= 1000.0
    try:
        return _utc_us(datetime.fromtimestamp(ts, tz=timezone.utc))
    except (OverflowError, OSError, ValueError):
        raise DateError("timestamp out of range") from None


def _time_from_number(value: float) -> int:
    """A time from a bare number: see _MIN_TIMESTAMP for the rule."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DateError("not a finite number")
    if abs(value) >= 1 << 53:  # float() of a huge JSON integer overflows
        raise DateError("timestamp out of range")
    if value < 0:
        raise DateError("a negative number is neither a year nor a timestamp after 1973")
    if value < 10000:
        return _year_end(int(value))  # a year; 2016.5 (a fractional year) is in 2016
    if float(value).is_integer() and 10000101 <= value <= 99991231:  # compact ISO YYYYMMDD
        digits = str(int(value))
        try:
            return _end_of_period(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        except ValueError:
            raise DateError(f"{digits} is not a YYYYMMDD date (no such day)") from None
    if value < _MIN_TIMESTAMP:
        raise DateError(
            f"{value!r} is neither a year, a YYYYMMDD date nor a Unix timestamp after 1973"
        )
    return _time_from_timestamp(float(value))


def _year_end(year: int) -> int:
    if not 1 <= year <= 9999:
        raise DateError("year out of range")
    return _end_of_period(year)


_ISO_FULL_RE = re.compile(
    r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?"
)


def _time_from_iso(m: re.Match[str]) -> int:
    """An ISO date and time with an optional offset, converted to UTC."""
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    second = int(m.group(6) or 0)
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    offset = m.group(8)
    tz = timezone.utc
    if offset and offset not in ("Z", "UTC", "GMT"):
        digits = offset[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + int(digits[2:4] or 0)
        tz = timezone(timedelta(minutes=minutes if offset[0] == "+" else -minutes))
    try:
        return _utc_us(datetime(year, month, day, hour, minute, second, micro, tzinfo=tz))
    except (ValueError, OverflowError):
        raise DateError("no such day or time") from None


@functools.lru_cache(maxsize=1 << 16)
def _time_from_string(text: str) -> int:
    s = text.strip()
    if not s:
        raise DateError("empty")
    if m := _CC_DUMP_RE.fullmatch(s):  # a crawl of ISO week W: as of that week's Sunday
        try:
            sunday = date.fromisocalendar(int(m.group(1)), int(m.group(2)), 7)
        except ValueError:
            raise DateError(f"{s} names no ISO week (weeks are 01-52, or 53)") from None
        return _end_of_period(sunday.year, sunday.month, sunday.day)
    if _YEAR_RE.fullmatch(s):
        return _year_end(int(s))
    if _NUMBER_RE.fullmatch(s):
        number = float(s) if "." in s else int(s)
        return _time_from_number(number)
    if m := _ISO_FULL_RE.fullmatch(s):
        return _time_from_iso(m)
    if m := _ISO_RE.fullmatch(s):  # a date without a time: the period it names
        month, day = m.group(2), m.group(3)
        try:
            return _end_of_period(int(m.group(1)), int(month) if month else None,
                                  int(day) if day else None)
        except (ValueError, OverflowError):
            raise DateError("no such day") from None
    try:  # whatever else ISO 8601 allows (20190401T10:00:00 included)
        return _utc_us(datetime.fromisoformat(s))
    except (ValueError, OverflowError):
        pass
    try:  # RFC 2822: "Mon, 01 Apr 2019 10:00:00 GMT"
        return _utc_us(email.utils.parsedate_to_datetime(s))
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    raise DateError("unrecognised format")


def parse_date(value: Any) -> int:
    """When a date value says a document was written: microseconds since the Unix epoch,
    UTC (a period stands for its last microsecond); DateError when it names no date."""
    if isinstance(value, bool) or value is None:
        raise DateError("no date")
    if isinstance(value, (int, float)):
        us = _time_from_number(value)
    elif isinstance(value, datetime):
        try:
            us = _utc_us(value)
        except OverflowError:
            raise DateError("out of range") from None
    elif isinstance(value, date):
        us = _end_of_period(value.year, value.month, value.day)
    elif isinstance(value, str):
        us = _time_from_string(value)
    else:
        raise DateError(f"a {type(value).__name__}, not a date")
    if not _MIN_US <= us <= _MAX_US:
        raise DateError("year out of range")
    return us


_MIN_US = _utc_us(datetime(1, 1, 1))
_MAX_US = _end_of_period(9999)


def utc_date(us: int) -> date:
    """The UTC date of a time from `parse_date`."""
    return (_EPOCH + timedelta(microseconds=us)).date()


def parse_year(value: Any) -> int:
    """The year a date value names (its UTC year); DateError when it names none."""
    return utc_date(parse_date(value)).year


def describe_date_error(where: str, value: Any, field_name: str, why: str = "") -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    why = f" ({why})" if why else ""
    return (
        f"{where}: cannot read a year from {field_name!r} = {shown}{why}: use a year (2019), "
        "an ISO date or timestamp (2019-04-01, 20190401, 2019-04-01T10:00:00Z) or a unix "
        "timestamp"
    )
