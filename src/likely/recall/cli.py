"""`likely recall`: train the two-tower model, query it, and evaluate it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

recall_app = typer.Typer(
    name="recall",
    help="Vector recall: a two-tower model and a FAISS index of the window's items.",
    no_args_is_help=True,
)

RunOption = Annotated[
    Path,
    typer.Option("--run", "-r", help="A recall run folder (`likely recall train`)."),
]


def _recall_config(cfg):
    """The config to train with: `recall.train` is the trainer's section."""
    from likely.config import ConfigError
    from likely.recall.window import user_column

    try:
        cfg.check_recall()
        user_column(cfg)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return cfg.model_copy(update={"train": cfg.recall.train})


@recall_app.command()
def train(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Experiment config (YAML).")
    ],
    target_date: Annotated[
        str | None,
        typer.Option(
            "--target-date",
            "-t",
            help="Evaluation day, YYYY-MM-DD; the model learns from the "
            "data.window_days days before it.",
        ),
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Run folder to create; default runs/two_tower-<target>-<time>.",
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Override recall.train.epochs.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda; overrides recall.train.")
    ] = None,
) -> None:
    """Train the two-tower model on the window's clicks; write the recall artifact.

    The run folder holds the weights and encoders as a ranking run does, and
    recall/: every item of the window with its vector, the users' latest
    rows, and the item index of recall.index.
    """
    import time as clock

    from likely.cli import _prepare_window, _user_errors, console, out
    from likely.config import load_config, parse_config
    from likely.recall.artifact import build_artifact
    from likely.recall.two_tower import RetrievalObjective
    from likely.train.trainer import Trainer

    with _user_errors():
        cfg = load_config(config)
        raw = cfg.model_dump(mode="json")
        for key, value in (("epochs", epochs), ("device", device)):
            if value is not None:
                raw["recall"]["train"][key] = value
        cfg = _recall_config(parse_config(raw, origin=str(config)))
        prepared = _prepare_window(cfg, target_date)
        target = prepared.manifest.get("target_date")
        if run is None:
            stamp = clock.strftime("%Y%m%d-%H%M%S")
            run = Path("runs") / f"two_tower-{target or 'all'}-{stamp}"
        with console.status("training the two-tower model") as status:

            def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
                status.update(f"epoch {epoch}: step {step}/{steps}, loss {loss:.4f}")

            objective = RetrievalObjective(cfg, prepared)
            result = Trainer(
                cfg, prepared, run, on_step=on_step, objective=objective
            ).fit()
            status.update("embedding the window's items and building the index")
            summary = build_artifact(run, cfg, prepared)
    table = Table(title=f"two-tower recall: {run}")
    for column in ("split", "recall of clicks", "clicks", "items"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, metrics in result.metrics.items():
        table.add_row(
            split,
            f"{metrics['recall']:.4f}",
            f"{metrics['clicks']:,.0f}",
            f"{metrics['items']:,.0f}",
        )
    out.print(table)
    seconds = summary["seconds"]
    out.print(
        f"trained in {result.seconds:.1f}s; {summary['items']:,} items "
        f"({summary['clicked_items']:,} clicked) in the "
        f"{summary['index']['kind']} index (built in {seconds['index_build']:.2f}s); "
        f"{summary['users']:,} users"
    )
    out.print(f"run: {run}")


@recall_app.command()
def query(
    run: RunOption,
    user: Annotated[str, typer.Option("--user", "-u", help="A raw user id.")],
    history: Annotated[
        str | None,
        typer.Option(
            help="The user's latest clicked items, comma-separated raw ids, "
            "oldest first; replaces the window's (as the feature store would "
            "pass it). Empty for none."
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="Items to print.")] = 20,
    k: Annotated[
        int | None, typer.Option(help="Candidates to recall; default the config's.")
    ] = None,
) -> None:
    """Print a user's top recalled items.

    The user vector is computed now, from the user's features and latest
    behaviour; a user without history gets the window's most clicked items.
    """
    from likely.cli import _fail, _user_errors, out
    from likely.recall.artifact import Recaller

    with _user_errors():
        recaller = Recaller.load(run)
    items = None
    if history is not None:
        items = [_parse_item(recaller, part) for part in history.split(",") if part]
    try:
        found = recaller.recall_user(user, history=items, k=k)
    except (ValueError, TypeError) as error:
        _fail(str(error))
    known = "" if recaller.user_row(user) else " (not in the window)"
    table = Table(
        title=f"user {user}{known}: {len(found.items):,} candidates from "
        f"{found.source}"
    )
    score = "score" if found.source == "two_tower" else "clicks in window"
    for column in ("rank", "item", score):
        table.add_column(column, justify="right")
    for rank, (item, value) in enumerate(
        zip(found.items[:top], found.scores[:top], strict=True), start=1
    ):
        shown = f"{value:.4f}" if found.source == "two_tower" else f"{value:,.0f}"
        table.add_row(str(rank), str(item), shown)
    out.print(table)


def _parse_item(recaller, text: str):
    """A raw item id from the command line, as the item column types it."""
    text = text.strip()
    if recaller.items[recaller.item_column].dtype.is_integer():
        try:
            return int(text)
        except ValueError:
            from likely.cli import _fail

            _fail(f"item id {text!r} is not an integer, as the item column is")
    return text


@recall_app.command("eval")
def evaluate(
    run: RunOption,
    ranking_run: Annotated[
        Path | None,
        typer.Option(
            help="A trained ranking run (`likely train`) on the same window, for "
            "the item-embedding baseline; without it that row is left out."
        ),
    ] = None,
    k: Annotated[
        int | None, typer.Option(help="Candidates per user; default the config's.")
    ] = None,
) -> None:
    """recall@K and hit rate@K of the target day's clicks, beside the baselines.

    Baselines: the window's most clicked items, and the mean of a ranking
    model's item embeddings over the user's recent clicks. Writes
    recall/eval.json in the run.
    """
    from likely.cli import _prepare_window, _user_errors, console, out
    from likely.recall.artifact import RECALL_DIR, Recaller
    from likely.recall.evaluate import evaluate_recall
    from likely.train.checkpoint import atomic_write_json

    with _user_errors():
        recaller = Recaller.load(run)
        manifest = json.loads((run / "manifest.json").read_text())
        prepared = _prepare_window(recaller.config, manifest["target_date"])
        with console.status("evaluating"):
            try:
                result = evaluate_recall(recaller, prepared, ranking_run, k)
            except ValueError as error:
                from likely.cli import _fail

                _fail(str(error))
    atomic_write_json(run / RECALL_DIR / "eval.json", result.to_json())
    table = Table(
        title=f"recall on {manifest['target_date']}: {result.users:,} users, "
        f"{result.clicks:,} clicked items"
    )
    for column in ("method", f"recall@{result.k}", f"hit rate@{result.k}"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in result.methods:
        table.add_row(row.method, f"{row.recall:.4f}", f"{row.hit_rate:.4f}")
    out.print(table)
    out.print(
        f"{result.users_without_history:,} users without history get the "
        f"popularity list from every method; {result.reachable:.1%} of the "
        "clicks are on items of the window's catalogue (the most any method "
        "can recall)"
    )
