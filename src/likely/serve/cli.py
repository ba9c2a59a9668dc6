"""`likely events`: the impressions and clicks the service recorded."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

events_app = typer.Typer(
    name="events",
    help="The service's recorded impressions and clicks: export them as logs.",
    no_args_is_help=True,
)


@events_app.callback()
def main() -> None:
    """The service's recorded impressions and clicks: export them as logs."""


@events_app.command()
def export(
    store: Annotated[
        str,
        typer.Option(
            "--store",
            "-s",
            help="The feature store: sqlite:///relative.db, sqlite:////absolute.db, "
            "a file path, or redis://host:port/db.",
        ),
    ],
    day: Annotated[
        str, typer.Option("--day", "-d", help="The UTC day to export, YYYY-MM-DD.")
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="The logs folder; the day goes to <date column>=YYYY-MM-DD/ in it.",
        ),
    ],
    label_column: Annotated[
        str | None,
        typer.Option(
            help="The label's column; default the one profiles were loaded with."
        ),
    ] = None,
    date_column: Annotated[
        str | None,
        typer.Option(
            help="The partition folder's key; default the one profiles were loaded "
            "with, else 'day'."
        ),
    ] = None,
) -> None:
    """Write a day of events as a day of impression logs, for `likely prepare`.

    One row per impression, labelled 1 when a click on the same item by the same
    user followed it that day. Exporting a day again replaces its file.
    """
    import redis

    from likely.cli import _fail, out
    from likely.serve.export import label_day, write_day
    from likely.serve.store import open_store

    try:
        when = dt.date.fromisoformat(day)
    except ValueError:
        _fail(f"day {day!r} is not a date; use YYYY-MM-DD")
    try:
        with open_store(store, create=False) as opened:
            labelled = label_day(
                opened, when, label_column=label_column, date_column=date_column
            )
        path = write_day(labelled, out_dir)
    except (ValueError, OSError, redis.exceptions.RedisError) as error:
        _fail(str(error))
    rows, positives = labelled.rows.height, labelled.positives
    out.print(
        f"{rows:,} impressions written, {positives:,} clicked "
        f"(CTR {positives / rows:.2%}), from {labelled.clicks:,} click events"
    )
    if labelled.unmatched_clicks:
        out.print(
            f"{labelled.unmatched_clicks:,} clicks followed no impression that day "
            "and were left out"
        )
    out.print(f"written: {path}")
