"""Write a comparison's report: JSON, a Markdown table, charts and one HTML page.

The HTML page carries its charts inline (PNG as data URIs) and no script, so
it can be mailed or attached as a single file and opened anywhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from dataclasses import asdict
from pathlib import Path

from likely import __version__
from likely.report.compare import Comparison
from likely.report.plots import plot_auc, plot_incremental, plot_losses
from likely.train.checkpoint import atomic_write_json

VERDICT_COLOURS = {
    "supported": "#1b7f3b",
    "not supported": "#b3261e",
    "inconclusive": "#8a6d00",
}


def write_report(comparison: Comparison) -> Path:
    """Write every file of the report into the comparison's folder.

    Returns:
        The HTML page's path.
    """
    out = comparison.out_dir
    summary = comparison.summary()
    atomic_write_json(
        out / "results.json",
        {
            "likely_version": __version__,
            "bayes_auc": comparison.bayes_auc,
            "seeds": comparison.seeds,
            "models": summary,
            "runs": [
                {k: v for k, v in asdict(r).items() if k not in ("steps", "losses")}
                for r in comparison.runs
            ],
            "incremental": [asdict(d) for d in comparison.incremental],
        },
    )
    atomic_write_json(out / "claims.json", [c.to_json() for c in comparison.claims])
    (out / "table.md").write_text(markdown_table(comparison))
    charts = [
        ("loss_curves.png", plot_losses(comparison, out / "loss_curves.png")),
        ("auc.png", plot_auc(comparison, out / "auc.png")),
    ]
    if comparison.incremental:
        charts.append(
            ("incremental.png", plot_incremental(comparison, out / "incremental.png"))
        )
    page = out / "index.html"
    page.write_text(_html(comparison, summary, dict(charts)))
    return page


def _mean_std(row: dict, key: str) -> str:
    return f"{row[key]:.4f} ± {row[f'{key}_std']:.4f}"


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The comparison table as header and rows of text (mean ± std over seeds)."""
    header = [
        "model",
        "test AUC",
        "logloss",
        "GAUC",
        "train s",
        "samples/s",
        "parameters",
    ]
    rows = []
    for row in comparison.summary():
        rows.append(
            [
                row["model"],
                _mean_std(row, "auc"),
                _mean_std(row, "logloss"),
                _mean_std(row, "gauc"),
                f"{row['seconds']:.1f}",
                f"{row['samples_per_second']:,.0f}",
                f"{row['parameters']:,}",
            ]
        )
    if comparison.bayes_auc is not None:
        rows.append(
            ["Bayes-optimal", f"{comparison.bayes_auc:.4f}", "", "", "", "", ""]
        )
    return header, rows


def markdown_table(comparison: Comparison) -> str:
    """The table and the verdicts as Markdown, for READMEs and notes."""
    header, rows = table_rows(comparison)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        f"Mean ± std over {len(comparison.seeds)} seeds.",
        "",
        "| claim | verdict | difference [95% interval] |",
        "|---|---|---|",
    ]
    for claim in comparison.claims:
        lines.append(f"| {claim.claim} | {claim.verdict} | {_interval(claim)} |")
    return "\n".join(lines) + "\n"


def _interval(claim) -> str:
    interval = claim.interval
    if interval is None:
        return "-"
    return (
        f"{interval.estimate:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}] "
        f"({interval.method})"
    )


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html(comparison: Comparison, summary: list[dict], charts: dict[str, Path]) -> str:
    e = html.escape
    manifest = comparison.manifest
    splits = manifest.get("splits", {})
    header, rows = table_rows(comparison)
    best_auc = max(row["auc"] for row in summary)
    table = ["<table><thead><tr>"]
    table += [f"<th>{e(h)}</th>" for h in header]
    table.append("</tr></thead><tbody>")
    for row, stats in zip(rows, [*summary, None], strict=False):
        bold = stats is not None and stats["auc"] == best_auc
        cells = "".join(f"<td>{e(c)}</td>" for c in row)
        table.append(f'<tr class="{"best" if bold else ""}">{cells}</tr>')
    table.append("</tbody></table>")

    claims = []
    for claim in comparison.claims:
        colour = VERDICT_COLOURS[claim.verdict]
        claims.append(
            "<div class='claim'>"
            f"<span class='badge' style='background:{colour}'>{e(claim.verdict)}</span>"
            f"<div><b>{e(claim.claim)}</b><br>"
            f"{e(claim.measure)}: {e(_interval(claim))}<br>"
            f"<span class='why'>{e(claim.reason)}</span></div></div>"
        )
    data = [
        f"window: {e(str(manifest.get('target_date') or 'all rows'))}"
        + (
            f" (trained on {len(manifest.get('train_days', []))} days before it)"
            if manifest.get("train_days")
            else ""
        ),
        *(
            f"{e(name)}: {split['rows']:,} rows, CTR {split['ctr']:.4f}"
            for name, split in splits.items()
        ),
        f"seeds: {', '.join(str(s) for s in comparison.seeds)}",
    ]
    incremental = ""
    if comparison.incremental:
        lines = "".join(
            f"<tr><td>{e(d.day)}</td><td>{d.incremental['auc']:.4f}</td>"
            f"<td>{d.scratch['auc']:.4f}</td>"
            f"<td>{d.difference['estimate']:+.4f} [{d.difference['low']:+.4f}, "
            f"{d.difference['high']:+.4f}]</td></tr>"
            for d in comparison.incremental
        )
        incremental = (
            "<h2>Incremental training against training from scratch</h2>"
            "<table><thead><tr><th>day</th><th>incremental AUC</th>"
            "<th>scratch AUC</th><th>difference [95% interval]</th></tr></thead>"
            f"<tbody>{lines}</tbody></table>" + _image(charts["incremental.png"])
        )
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>likely comparison: {e(comparison.out_dir.name)}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
  padding: 0 1em; color: #1d1d1f; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }}
h2 {{ font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: 0.8em 0;
  font-variant-numeric: tabular-nums; }}
th, td {{ padding: 0.35em 0.8em; border-bottom: 1px solid #e5e5e5; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.best td {{ font-weight: 600; background: #f0f7ff; }}
.meta {{ color: #555; font-size: 0.9em; }}
.claim {{ display: flex; gap: 0.8em; align-items: flex-start; margin: 0.7em 0; }}
.badge {{ color: white; border-radius: 4px; padding: 0.1em 0.6em; white-space: nowrap;
  font-size: 0.85em; min-width: 8em; text-align: center; }}
.why {{ color: #555; font-size: 0.9em; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }}
</style></head><body>
<h1>Model comparison</h1>
<p class="meta">{"<br>".join(data)}<br>likely {e(__version__)}, {created}</p>
<h2>Results on the test split</h2>
{"".join(table)}
<p class="meta">Mean ± standard deviation over seeds. Train seconds and samples/s
are per run, on this machine.</p>
{_image(charts["auc.png"])}
<h2>The mission's claims, tested on this data</h2>
{"".join(claims)}
<p class="meta">Each verdict reads the 95% interval of the difference: supported
when it lies above zero, not supported when it lies below the smallest gain that
counts, inconclusive when it holds both. AUC intervals are the wider of a paired
t interval over seeds and a bootstrap over test users.</p>
<h2>Training loss</h2>
{_image(charts["loss_curves.png"])}
{incremental}
<h2>Files</h2>
<p class="meta">results.json, claims.json, table.md, and one run folder per model
and seed under runs/ (config, encoders, metrics.jsonl, model weights).</p>
<details><summary>config</summary><pre>{
        e(json.dumps(comparison.config.model_dump(mode="json"), indent=1))
    }</pre></details>
</body></html>
"""
