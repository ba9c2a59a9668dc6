"""Day windows: which days train, which day evaluates, which days come after.

The mission's schedule: train on the N days (default 7) before a target date,
evaluate on the target date, then update incrementally on each later day in turn.
The day after the logs' last day is a target too: a model trained to serve it,
as production retrains each night for tomorrow, with no day to evaluate on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


class WindowError(ValueError):
    """A target date or window that the available days cannot satisfy."""


@dataclass(frozen=True)
class DayWindow:
    """Training days, the evaluation day, and later days for incremental updates."""

    train_days: tuple[dt.date, ...]
    target_day: dt.date
    later_days: tuple[dt.date, ...]

    @property
    def first_day(self) -> dt.date:
        return self.train_days[0]


def parse_date(text: str) -> dt.date:
    """A date from the command line, as YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise WindowError(
            f"target date {text!r} is not a date; use YYYY-MM-DD"
        ) from None


def _span(days: list[dt.date]) -> str:
    if not days:
        return "no days"
    return f"{days[0]} to {days[-1]} ({len(days)} days)"


def select_window(
    available: list[dt.date],
    target: dt.date,
    window_days: int = 7,
    allow_missing: bool = False,
) -> DayWindow:
    """Pick the `window_days` days before `target` for training.

    Args:
        available: days present in the logs, any order.
        target: the evaluation day; it must have data, unless it is the day
            after the last day of the logs (train to serve that day; the
            window then has no evaluation rows).
        window_days: how many days before the target train the model.
        allow_missing: train on a window with gaps instead of refusing it.

    Raises:
        WindowError: the target has no data, no day of the window does, or (unless
            `allow_missing`) some days of the window are missing; the message
            lists what the logs do have.
    """
    days = sorted(set(available))
    serving_next_day = bool(days) and target == days[-1] + dt.timedelta(days=1)
    if target not in days and not serving_next_day:
        raise WindowError(
            f"target date {target} has no data; the logs cover {_span(days)} "
            "(the day after the last one is allowed too: it trains to serve it)"
        )
    wanted = [target - dt.timedelta(days=k) for k in range(window_days, 0, -1)]
    present = [d for d in wanted if d in days]
    missing = [d for d in wanted if d not in days]
    if not present:
        raise WindowError(
            f"no data in the {window_days} days before {target} "
            f"({wanted[0]} to {wanted[-1]}); the logs cover {_span(days)}"
        )
    if missing and not allow_missing:
        shown = ", ".join(str(d) for d in missing[:7])
        more = f" and {len(missing) - 7} more" if len(missing) > 7 else ""
        raise WindowError(
            f"the {window_days}-day window before {target} is missing "
            f"{len(missing)} day(s): {shown}{more}; the logs cover {_span(days)}. "
            "Choose a later target date, a smaller window_days, or allow missing days."
        )
    later = tuple(d for d in days if d > target)
    return DayWindow(tuple(present), target, later)
