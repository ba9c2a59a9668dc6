"""The `likely` command: one subcommand per step of the pipeline."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

from likely import __version__

app = typer.Typer(
    name="likely",
    help="CTR ranking for 'you may like' feeds: prepare logs, train, compare, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console(soft_wrap=True, highlight=False)
logger = logging.getLogger("likely")


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=console, show_path=False, show_time=False)
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[handler], force=True
    )


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug detail.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.")
    ] = False,
) -> None:
    """likely: logs in, CTR models and a served feed out."""
    if version:
        out.print(__version__)
        raise typer.Exit()
    _setup_logging(verbose)


ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="Experiment config (YAML). Relative log paths in it are relative to "
        "the config file.",
    ),
]
EpochsOption = Annotated[
    int | None, typer.Option(help="Override train.epochs of the config.")
]


@app.command()
def prepare(
    config: ConfigOption,
    target_date: Annotated[
        str | None,
        typer.Option(
            "--target-date",
            "-t",
            help="Evaluation day, YYYY-MM-DD. Training uses the data.window_days "
            "days before it. Required when the config has data.date_column.",
        ),
    ] = None,
    allow_missing_days: Annotated[
        bool,
        typer.Option(help="Train on a window with missing days instead of stopping."),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Rebuild even if a cache for these inputs exists.")
    ] = False,
) -> None:
    """Read logs, pick the day window, fit encoders, and cache encoded arrays.

    The result is a folder under data.cache_dir named by a digest of the config,
    the target date and the input files; `likely info FOLDER` describes it.
    """
    from likely.config import load_config

    with _user_errors():
        prepared = _prepare_window(
            load_config(config),
            target_date,
            allow_missing_days=allow_missing_days,
            force=force,
        )
    _print_info(prepared.folder, prepared.manifest)
    out.print(f"prepared: {prepared.folder}")


@contextlib.contextmanager
def _user_errors():
    """Errors about the user's input become one clean line and exit code 2;
    anything else keeps its traceback."""
    from likely.config import ConfigError
    from likely.data.prepare import PrepareError
    from likely.data.readers import LogFormatError
    from likely.data.windows import WindowError
    from likely.train.checkpoint import CheckpointError

    try:
        yield
    except (
        ConfigError,
        PrepareError,
        WindowError,
        LogFormatError,
        CheckpointError,
        FileNotFoundError,
        FileExistsError,
    ) as error:
        _fail(str(error))


def _prepare_window(cfg, target_date: str | None, **options):
    """Prepare (or reuse) the window of a config, with a progress bar."""
    from likely.data.prepare import prepare as run_prepare
    from likely.data.windows import parse_date

    target = parse_date(target_date) if target_date else None
    with _progress_bar() as update:
        return run_prepare(cfg, target, progress=update, **options)


@contextlib.contextmanager
def _progress_bar():
    """A rich progress bar driven by `progress(step, done, total)` callbacks."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with RichProgress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done)

        yield update


def _print_info(folder: Path, manifest: dict) -> None:
    table = Table(title=f"prepared data: {folder}")
    for column in ("split", "rows", "clicks", "CTR", "days", "Bayes AUC"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for name, split in manifest["splits"].items():
        days = split["days"]
        span = "-"
        if len(days) == 1:
            span = days[0]
        elif days:
            span = f"{days[0]}..{days[-1][5:]} ({len(days)})"
        table.add_row(
            name,
            f"{split['rows']:,}",
            f"{split['clicks']:,}",
            f"{split['ctr']:.4f}",
            span,
            _bayes_auc(folder / name),
        )
    out.print(table)
    tables = ", ".join(f"{g} {n:,}" for g, n in manifest["vocab_sizes"].items())
    out.print(f"embedding tables (rows, reserved ids included): {tables}")
    if manifest.get("target_date"):
        out.print(
            f"target date {manifest['target_date']}; train days "
            f"{manifest['train_days'][0]} .. {manifest['train_days'][-1]}; "
            f"later days for incremental updates: {len(manifest['later_days'])}"
        )
    out.print(
        f"rows read {manifest['rows_read']:,}, dropped {manifest['rows_dropped']:,}"
    )


def _bayes_auc(split: Path) -> str:
    """AUC of the true click probability, where the data carries it."""
    from likely.data.prepare import bayes_auc

    return _shown_auc(bayes_auc(split))


def _shown_auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def generate(
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the day-partitioned logs.")
    ] = Path("data/synthetic"),
    days: Annotated[int, typer.Option(help="Number of days to generate.")] = 8,
    rows_per_day: Annotated[int, typer.Option(help="Impressions per day.")] = 200_000,
    users: Annotated[int, typer.Option(help="Users in the synthetic world.")] = 20_000,
    items: Annotated[int, typer.Option(help="Items in the catalogue.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same logs.")] = 0,
    start_date: Annotated[
        str, typer.Option(help="First day, YYYY-MM-DD.")
    ] = "2026-11-01",
    history_length: Annotated[
        int, typer.Option(help="Recent clicks kept per user (the sequence feature).")
    ] = 20,
) -> None:
    """Write synthetic "you may like" logs whose true click probability is known.

    One Parquet file per day under OUT/day=YYYY-MM-DD/, plus OUT/_generator.json.
    Each row carries `probability`, the chance the click was drawn with, so the
    best achievable (Bayes) AUC of every day is known.
    """
    from likely.data.synthetic import generate as run_generate
    from likely.data.windows import WindowError, parse_date

    try:
        first = parse_date(start_date)
        with console.status(f"generating {days} days of {rows_per_day:,} rows"):
            summary = run_generate(
                out_dir,
                days=days,
                rows_per_day=rows_per_day,
                num_users=users,
                num_items=items,
                seed=seed,
                start_date=first,
                history_length=history_length,
            )
    except (ValueError, WindowError) as error:
        _fail(str(error))
    table = Table(title=f"synthetic logs: {summary.out_dir}")
    for column in ("day", "rows", "CTR", "Bayes AUC"):
        table.add_column(column, justify="left" if column == "day" else "right")
    per_day = summary.rows // len(summary.days)
    for day, ctr, auc in zip(
        summary.days, summary.day_ctr, summary.bayes_auc, strict=True
    ):
        table.add_row(str(day), f"{per_day:,}", f"{ctr:.4f}", f"{auc:.4f}")
    out.print(table)
    out.print(
        f"wrote {summary.rows:,} rows in {summary.seconds:.1f}s to {summary.out_dir}; "
        f"next: likely prepare --config configs/synthetic.yaml "
        f"--target-date {summary.days[-1]}"
    )
    if Path(summary.out_dir).resolve() != Path("data/synthetic").resolve():
        out.print(
            "configs/synthetic.yaml reads data/synthetic (beside configs/); "
            f"set its data.path to {Path(summary.out_dir).resolve()} for these logs"
        )


@app.command()
def init(
    logs: Annotated[
        Path, typer.Argument(help="A log file or folder, in any format prepare reads.")
    ],
    config_path: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the config.")
    ] = Path("configs/my_logs.yaml"),
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing config at --out.")
    ] = False,
) -> None:
    """Inspect logs and write a starting config, with a comment on every guess."""
    from likely.config import ConfigError, load_config
    from likely.data.inspect import inspect_logs, render_config

    if config_path.exists() and not overwrite:
        _fail(f"{config_path} exists; pass --overwrite to replace it")
    try:
        inspection = inspect_logs(logs)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(render_config(inspection, config_path))
    try:
        load_config(config_path)
    except ConfigError as error:
        _fail(f"the written config does not load; please report this:\n{error}")
    out.print(
        f"wrote {config_path}: format {inspection.format.value}, "
        f"{len(inspection.features)} features from {inspection.rows_sampled:,} rows"
    )
    if inspection.skipped:
        out.print("left out: " + "; ".join(inspection.skipped))
    target = "--target-date DAY " if "date_column" in inspection.data else ""
    out.print(f"next: likely prepare --config {config_path} {target}".rstrip())


@app.command()
def train(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Experiment config (YAML); not needed with --resume or --init-from, "
            "which use the run's own.",
        ),
    ] = None,
    target_date: Annotated[
        str | None,
        typer.Option(
            "--target-date",
            "-t",
            help="Evaluation day, YYYY-MM-DD; training uses the data.window_days "
            "days before it. Required when the config has data.date_column.",
        ),
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Run folder to create; default runs/<model>-<target>-<time>.",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Resume the run in this folder from its last checkpoint."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Train this model instead of the config's (e.g. deepfm)."),
    ] = None,
    epochs: EpochsOption = None,
    train_days: Annotated[
        int | None,
        typer.Option(
            help="Days before the target date to train on; overrides "
            "data.window_days (default 7)."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="auto, cpu or cuda; overrides train.device."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Continue from a finished run on a newer window: its encoders "
            "are extended with the new ids and its tables grown; old rows keep "
            "their trained values, and its optimizers their state. The run's "
            "config is used."
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            help="Train with this many processes (DistributedDataParallel via "
            "torchrun; gloo on CPU, NCCL on CUDA)."
        ),
    ] = 1,
) -> None:
    """Train a model on the window before the target date; evaluate on that day.

    Prepares the window first if it is not cached, then prints AUC, logloss and
    GAUC per split beside the Bayes-optimal AUC where the data knows it.
    """
    import time as clock

    from likely.config import load_config, parse_config
    from likely.data.encoders import FeatureEncoders
    from likely.train.trainer import Trainer

    source = resume or init_from
    if source is None and config is None:
        _fail("give --config, or --resume / --init-from with a run folder")
    with _user_errors():
        cfg = load_config(source / "config.json" if source else config)
        raw = cfg.model_dump(mode="json")
        if model:
            raw["model"] = {"name": model}
        for key, value in (("epochs", epochs), ("device", device)):
            if value is not None:
                raw["train"][key] = value
        if train_days is not None:
            raw["data"]["window_days"] = train_days
        cfg = parse_config(raw, origin=str(source or config))
        extend = None
        if init_from is not None:
            extend = FeatureEncoders.load(init_from / "encoders.json", cfg)
        prepared = _prepare_window(cfg, target_date, extend=extend)
        target = prepared.manifest.get("target_date")
    if resume is None and run is None:
        stamp = clock.strftime("%Y%m%d-%H%M%S")
        run = Path("runs") / f"{cfg.model.name}-{target or 'all'}-{stamp}"
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        # The window is prepared (above) once, here; every worker reuses it.
        from likely.train.distributed import launch

        arguments = _without_option(sys.argv[1:], "--nproc")
        if resume is None and "--run" not in arguments:
            arguments += ["--run", str(run)]
        raise typer.Exit(code=launch(nproc, arguments))
    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[rate]:,.0f} samples/s"),
        TimeElapsedColumn(),
    )
    with RichProgress(*columns, console=console, transient=True) as bar:
        tasks: dict[int, TaskID] = {}
        started = {"time": clock.perf_counter(), "steps": 0}
        batch_size = cfg.train.batch_size

        def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
            if epoch not in tasks:
                tasks[epoch] = bar.add_task(
                    "", total=steps, epoch=epoch, loss=loss, rate=0
                )
                started.update(time=clock.perf_counter(), steps=step - 1)
            seconds = clock.perf_counter() - started["time"]
            rate = (step - started["steps"]) * batch_size / max(seconds, 1e-9)
            bar.update(tasks[epoch], completed=step, loss=loss, rate=rate)

        with _user_errors():
            trainer = Trainer(
                cfg,
                prepared,
                resume or run,
                resume=resume is not None,
                on_step=on_step,
                init_from=init_from,
            )
            result = trainer.fit()
    from likely.train.distributed import leave

    leave(trainer.world)
    if trainer.world.is_main:
        _print_metrics(prepared.folder, result)


@app.command()
def predict(
    run: Annotated[Path, typer.Option("--run", help="A finished run folder.")],
    logs: Annotated[Path, typer.Argument(help="Log file or folder to score.")],
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="Parquet file to write.")
    ] = Path("predictions.parquet"),
) -> None:
    """Score logs with a trained run, with exactly its preprocessing.

    Writes the user and label columns with each row's logit and probability; if
    the logs carry labels, prints the AUC and logloss of the scores.
    """
    from likely.train.metrics import evaluate
    from likely.train.predict import load_run, predict_file

    with _user_errors():
        loaded = load_run(run)
        scored = predict_file(loaded, logs, out_path)
    label = loaded.config.data.label
    metrics = evaluate(scored[label].to_numpy(), scored["logit"].to_numpy())
    out.print(
        f"scored {scored.height:,} rows: AUC {metrics['auc']:.4f}, "
        f"logloss {metrics['logloss']:.4f}; wrote {out_path}"
    )


@app.command()
def incremental(
    config: ConfigOption,
    start: Annotated[
        str,
        typer.Option(help="Evaluation day of the base model, YYYY-MM-DD."),
    ],
    batches: Annotated[
        int, typer.Option(help="Later days to update on, one day per batch.")
    ] = 3,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Folder for the runs; default runs/incremental-<time>."
        ),
    ] = None,
) -> None:
    """Incremental updates against retraining from scratch, day by day.

    Trains a base model on the window before START; then for each of the next
    BATCHES days, continues the previous model on the one new day and, beside
    it, trains a new model on the full window; both are evaluated on that day.
    """
    import time as clock

    from likely.config import load_config
    from likely.data.windows import parse_date
    from likely.train.incremental import run_incremental

    folder = out_dir or Path("runs") / f"incremental-{clock.strftime('%Y%m%d-%H%M%S')}"
    with _user_errors():
        cfg = load_config(config)
        first = parse_date(start)
        with console.status("training") as status:
            results = run_incremental(
                cfg, first, batches, folder, on_stage=lambda s: status.update(s)
            )
    table = Table(title=f"incremental against scratch: {folder}")
    for column in ("day", "incremental AUC", "scratch AUC", "gain", "Bayes AUC"):
        table.add_column(column, justify="left" if column == "day" else "right")
    for row in results:
        table.add_row(
            row.day,
            f"{row.incremental['auc']:.4f}",
            f"{row.scratch['auc']:.4f}",
            f"{row.auc_gain:+.4f}",
            _shown_auc(row.scratch.get("bayes_auc")),
        )
    out.print(table)


def _without_option(arguments: list[str], name: str) -> list[str]:
    """Command-line arguments with `name VALUE` or `name=VALUE` removed."""
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == name:
            skip = True
        elif not argument.startswith(f"{name}="):
            kept.append(argument)
    return kept


def _print_metrics(prepared_folder: Path, result) -> None:
    table = Table(title=f"{result.run_dir}: best epoch {result.best_epoch}")
    for column in ("split", "AUC", "Bayes AUC", "logloss", "GAUC", "calibration"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, metrics in result.metrics.items():
        gauc = metrics.get("gauc")
        table.add_row(
            split,
            f"{metrics['auc']:.4f}",
            _bayes_auc(prepared_folder / split),
            f"{metrics['logloss']:.4f}",
            "-" if gauc is None else f"{gauc:.4f}",
            f"{metrics['calibration']:.3f}",
        )
    out.print(table)
    out.print(
        f"{result.parameters:,} parameters; trained in {result.seconds:.1f}s at "
        f"{result.samples_per_second:,.0f} samples/s"
    )
    out.print(f"run: {result.run_dir}")


@app.command()
def compare(
    config: ConfigOption,
    target_date: Annotated[
        str | None,
        typer.Option(
            "--target-date",
            "-t",
            help="Evaluation day, YYYY-MM-DD (for logs with days).",
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated variants; default compare.models of the config "
            "(the mission's: wide_deep, wide_resnet, wide_resnet_nobn, deepfm, "
            "ipnn, opnn, dcn_v2)."
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Seeds per model; default compare.seeds (3).")
    ] = None,
    epochs: EpochsOption = None,
    incremental_days: Annotated[
        int | None,
        typer.Option(
            help="Test incremental training against scratch on this many days "
            "up to the target; default compare.incremental_days."
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Report folder; default reports/<config>-<target>. Run the same "
            "command again to finish an interrupted comparison.",
        ),
    ] = None,
) -> None:
    """Train the mission's models side by side, test its claims, write a report.

    Every model trains on the same window with the same seeds; the report holds
    a table (mean ± std over seeds), loss curves, an AUC chart, verdicts on the
    claims with 95% intervals, and an HTML page joining them.
    """
    from likely.config import load_config, parse_config
    from likely.data.windows import parse_date
    from likely.report.compare import CompareError, run_comparison
    from likely.report.page import table_rows, write_report

    with _user_errors():
        cfg = load_config(config)
        raw = cfg.model_dump(mode="json")
        if models is not None:
            raw["compare"]["models"] = [m.strip() for m in models.split(",") if m]
        for key, value in (("seeds", seeds), ("incremental_days", incremental_days)):
            if value is not None:
                raw["compare"][key] = value
        if epochs is not None:
            raw["train"]["epochs"] = epochs
        cfg = parse_config(raw, origin=str(config))
        target = parse_date(target_date) if target_date else None
    folder = out_dir or Path("reports") / f"{config.stem}-{target or 'all'}"
    if logging.getLogger().level > logging.DEBUG:
        # One line per run says what happens; the trainer's own lines (with
        # --verbose) would bury them.
        for name in ("likely.data", "likely.train", "likely.report"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with _user_errors(), console.status("comparing") as status:

        def say(message: str) -> None:
            status.update(message)
            console.print(message, highlight=False)

        try:
            comparison = run_comparison(cfg, folder, target, say=say)
        except CompareError as error:
            _fail(str(error))
        page = write_report(comparison)
    header, rows = table_rows(comparison)
    table = Table(title=f"test metrics, mean ± std over {len(comparison.seeds)} seeds")
    for column in header:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(*row)
    # Wide enough for the whole table even where stdout is not a terminal.
    Console(width=max(out.width, 112), highlight=False).print(table)
    for claim in comparison.claims:
        colour = {"supported": "green", "not supported": "red"}.get(
            claim.verdict, "yellow"
        )
        out.print(f"[{colour}]{claim.verdict:>13}[/]  {claim.claim}")
        out.print(f"{'':>15}{claim.reason}")
    out.print(f"report: {page}")


MODEL_PAPERS = {
    "lr": "logistic regression over ids, crosses and dense values",
    "fm": "Rendle, Factorization Machines, ICDM 2010",
    "wide_deep": "Cheng et al., Wide & Deep Learning for Recommender Systems, 2016",
    "wide_resnet": "Wide&Deep with a residual deep tower and BN after each block "
    "(the mission's model; He et al. 2016 for residual blocks)",
    "ipnn": "Qu et al., Product-based Neural Networks, ICDM 2016 (inner product)",
    "opnn": "Qu et al., Product-based Neural Networks, ICDM 2016 (outer product)",
    "pnn": "Qu et al., Product-based Neural Networks (both products)",
    "deepfm": "Guo et al., DeepFM, IJCAI 2017",
    "dcn_v2": "Wang et al., DCN V2, WWW 2021",
}


@app.command()
def models(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Experiment config; with it, each model is built for its features "
            "and its parameter count printed.",
        ),
    ] = None,
    target_date: Annotated[
        str | None,
        typer.Option(
            "--target-date",
            "-t",
            help="Evaluation day, for configs split by day (sizes come from the "
            "prepared window; prepares it if needed).",
        ),
    ] = None,
) -> None:
    """List the model zoo; with a config, build each model and count parameters."""
    from likely.config import MODEL_NAMES

    counts: dict[str, str] = {}
    if config is not None:
        counts = _parameter_counts(config, target_date)
    table = Table(title="models (choose one with `model: {name: ...}` in a config)")
    table.add_column("name")
    if counts:
        table.add_column("parameters", justify="right")
    table.add_column("what and where from")
    for name in MODEL_NAMES:
        row = [name, counts[name]] if counts else [name]
        table.add_row(*row, MODEL_PAPERS[name])
    out.print(table)


def _parameter_counts(config_path: Path, target_date: str | None) -> dict[str, str]:
    from likely.config import MODEL_NAMES, ConfigError, load_config, parse_config
    from likely.models.inputs import FeatureLayout
    from likely.models.registry import build_model, count_parameters

    with _user_errors():
        cfg = load_config(config_path)
        prepared = _prepare_window(cfg, target_date)
    manifest = prepared.manifest
    layout = FeatureLayout.from_config(
        cfg, manifest["vocab_sizes"], manifest["cross_sizes"]
    )
    counts = {}
    for name in MODEL_NAMES:
        raw = cfg.model_dump(mode="json")
        keep = raw["model"] if raw["model"]["name"] == name else {}
        raw["model"] = {**keep, "name": name}
        try:
            model_config = parse_config(raw, origin=str(config_path))
        except ConfigError as error:  # e.g. a product model with mixed widths
            counts[name] = f"n/a: {str(error).splitlines()[-1].strip()}"
            continue
        counts[name] = f"{count_parameters(build_model(model_config, layout)):,}"
    return counts


@app.command()
def info(
    folder: Annotated[
        Path, typer.Argument(help="A prepared folder (printed by `likely prepare`).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe prepared data: rows, days, CTR, vocabulary sizes, Bayes AUC."""
    from likely.data.prepare import load_manifest

    with _user_errors():
        manifest = load_manifest(folder)
    if as_json:
        out.print_json(json.dumps(manifest))
        return
    _print_info(folder, manifest)


@app.command()
def serve(
    run: Annotated[Path, typer.Option("--run", help="A finished ranking run.")],
    recall: Annotated[
        Path, typer.Option("--recall", help="A recall run (`likely recall train`).")
    ],
    store: Annotated[
        str,
        typer.Option(
            help="Feature store: sqlite:///PATH (embedded, the default) or "
            "redis://HOST:PORT/DB."
        ),
    ] = "sqlite:///data/serve/store.db",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="LIKELY_TOKEN",
            help="Bearer token for /events and /admin/*; default a random one, "
            "printed at start.",
        ),
    ] = None,
    watch: Annotated[
        Path | None,
        typer.Option(
            help="Runs folder to watch: the newest finished ranking run in it "
            "is loaded, checked and swapped in without dropping a request."
        ),
    ] = None,
    reload_profiles: Annotated[
        bool,
        typer.Option(
            help="Replace the store's user and item profiles with the recall "
            "run's window (done anyway when the store has none, or has them "
            "from another recall run)."
        ),
    ] = False,
) -> None:
    """Serve feeds: recall 1,000 candidates, rank them, return the top k.

    POST /recommend, POST /events, GET /health, GET /metrics,
    POST /admin/reload; the OpenAPI page is at /docs.
    """
    import secrets

    import torch
    import uvicorn

    from likely.serve.app import (
        Service,
        ServiceSettings,
        create_app,
        load_models,
        load_profiles,
        profile_source,
        settle_memory,
    )
    from likely.serve.store import open_store

    with _user_errors():
        try:
            feature_store = open_store(store)
        except ValueError as error:
            _fail(str(error))
        with console.status("loading the ranking and recall runs"):
            models = load_models(run, recall)
        meta = feature_store.meta()
        stale = meta is None or meta.source != profile_source(models)
        if reload_profiles or stale or not feature_store.has_profiles():
            with console.status("loading user and item profiles into the store"):
                load_profiles(feature_store, models)
    if token is None:
        token = secrets.token_urlsafe(24)
        out.print(f"write token (set LIKELY_TOKEN to choose one): {token}")
    # One thread a request, as many requests at once as cores (see Service).
    torch.set_num_threads(1)
    settings = ServiceSettings(run=run, recall=recall, token=token, runs_dir=watch)
    service = Service(settings, feature_store, models)
    settle_memory()
    out.print(
        f"serving {models.version} with {models.ranker.num_items:,} items from "
        f"{recall} on http://{host}:{port} (store {store})"
    )
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
    feature_store.close()


# Last, since the recall commands import this module's helpers.
from likely.recall.cli import recall_app  # noqa: E402
from likely.serve.cli import events_app  # noqa: E402

app.add_typer(recall_app, name="recall")
app.add_typer(events_app, name="events")

if __name__ == "__main__":
    sys.exit(app())
