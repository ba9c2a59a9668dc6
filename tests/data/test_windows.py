import datetime as dt

import pytest

from likely.data.windows import WindowError, parse_date, select_window

D = dt.date(2026, 11, 1)


def days(*offsets):
    return [D + dt.timedelta(days=k) for k in offsets]


def test_seven_days_before_the_target_and_later_days():
    window = select_window(days(*range(10)), D + dt.timedelta(days=7))
    assert window.train_days == tuple(days(*range(7)))
    assert window.target_day == D + dt.timedelta(days=7)
    assert window.later_days == tuple(days(8, 9))


def test_target_without_data():
    with pytest.raises(WindowError, match=r"2026-11-20 has no data.*2026-11-01"):
        select_window(days(*range(8)), dt.date(2026, 11, 20))


def test_day_after_the_logs_trains_to_serve_it():
    window = select_window(days(*range(8)), D + dt.timedelta(days=8))
    assert window.train_days == tuple(days(*range(1, 8)))
    assert window.target_day == D + dt.timedelta(days=8)
    assert window.later_days == ()
    with pytest.raises(WindowError, match="has no data"):
        select_window(days(*range(8)), D + dt.timedelta(days=9))


def test_missing_days_are_named_unless_allowed():
    available = days(0, 1, 3, 4, 5, 6, 7)
    with pytest.raises(WindowError, match=r"missing 1 day\(s\): 2026-11-03"):
        select_window(available, D + dt.timedelta(days=7))
    window = select_window(available, D + dt.timedelta(days=7), allow_missing=True)
    assert len(window.train_days) == 6


def test_no_day_of_the_window_has_data():
    with pytest.raises(WindowError, match="no data in the 3 days before"):
        select_window(days(0, 10), D + dt.timedelta(days=10), window_days=3)


def test_parse_date():
    assert parse_date("2026-11-08") == dt.date(2026, 11, 8)
    with pytest.raises(WindowError, match="'08/11/2026' is not a date"):
        parse_date("08/11/2026")
