"""The evaluation report: plots (matplotlib) and one static HTML page that shows them."""

from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np
from framefleet.tasks.artifacts.store import ArtifactStore
from framefleet.workers.evaluation import BASELINE, QUALITY_METRICS
from framefleet.workers.evaluation.metrics import STAGES, frame_key
from matplotlib.figure import Figure
from PIL import Image

DPI = 80
METRIC_LABELS = {"pickscore": "PickScore", "clip_score": "CLIP-Score", "aesthetic": "Aesthetic", "overall": "Overall"}
HEURISTIC_CAVEAT = ("These scores come from the HEURISTIC scorer: image statistics (sharpness, exposure, contrast, "
                    "colourfulness) that do not read the prompt. They are not image quality, and nothing here says "
                    "whether enhancement helps. Install the scoring extra and the model weights for PickScore, "
                    "CLIP-Score and the aesthetic model.")
OFFLINE_CAVEAT = ("Offline stand-ins ran the {stages} stage of these jobs (llm: a rule-based prompt enhancer; images: "
                  "a procedural generator; judge: colour-layout similarity to the inputs). This run tests the harness "
                  "and the pipeline's mechanics, not the real models.")
THUMB_WIDTH = 240


def _values(rows: list[dict], arm: str, get) -> list[float]:
    return [v for v in (get(r) for r in rows if r["arm"] == arm) if v is not None]


def _boxes(ax, rows, arms, get, title: str) -> None:
    data = [_values(rows, arm, get) or [np.nan] for arm in arms]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(arms) + 1), arms, rotation=20)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def plot_metrics(rows, arms, path: Path) -> None:
    fig = Figure(figsize=(3.2 * len(QUALITY_METRICS), 3.6), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(QUALITY_METRICS)), QUALITY_METRICS):
        _boxes(ax, rows, arms, lambda r, m=metric: r["scores"][m], METRIC_LABELS[metric])
    fig.suptitle("Re-scored final frames, per arm (0-100; triangle = mean)")
    fig.savefig(path, dpi=DPI)


def plot_paired(rows, arms, path: Path) -> None:
    baseline = {frame_key(r): r["scores"]["overall"] for r in rows if r["arm"] == BASELINE}
    fig = Figure(figsize=(4.8, 4.6), layout="constrained")
    ax = fig.subplots()
    seen: list[float] = []
    for i, arm in enumerate(arms):
        pairs = [(baseline[frame_key(r)], r["scores"]["overall"]) for r in rows if r["arm"] == arm
                 and baseline.get(frame_key(r)) is not None and r["scores"]["overall"] is not None]
        if arm != BASELINE and pairs:
            x, y = zip(*pairs)
            ax.scatter(x, y, s=16, alpha=0.7, color=f"C{i}", label=arm)
            seen += x + y
    low, high = (min(seen), max(seen)) if seen else (0, 100)
    ax.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel("baseline overall")
    ax.set_ylabel("arm overall (above the line: the arm wins)")
    ax.set_title("The same frame under baseline and each arm")
    if seen:
        ax.legend()
    fig.savefig(path, dpi=DPI)


def plot_consistency(rows, arms, path: Path) -> None:
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    _boxes(left, rows, arms, lambda r: r["consistency"]["previous"], "Previous frame in the chain")
    _boxes(right, rows, arms, lambda r: r["consistency"]["reference"], "Reference (or first frame)")
    fig.suptitle("Image-image cosine between chained frames")
    fig.savefig(path, dpi=DPI)


def _bar_with_ci(ax, x, stat, **kwargs) -> None:
    mean = stat["mean"] or 0.0
    low, high = stat["ci95"] or (mean, mean)
    ax.bar(x, mean, yerr=[[mean - low], [high - mean]], capsize=3, **kwargs)


def plot_latency(summary, arms, path: Path) -> None:
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    per_frame, per_job = fig.subplots(1, 2)
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        latency = summary["by_arm"][arm]["latency_s"]
        for s, stage in enumerate(STAGES):
            _bar_with_ci(per_frame, s + i * width, latency["per_frame"][stage], width=width,
                         color=f"C{i}", label=arm if s == 0 else None)
        _bar_with_ci(per_job, i, latency["per_job"]["total"], color=f"C{i}")
    per_frame.set_xticks(np.arange(len(STAGES)) + 0.4 - width / 2, STAGES)
    per_frame.set_ylabel("seconds")
    per_frame.set_title("Per frame, by stage (mean, 95% CI)")
    per_frame.legend()
    per_job.set_xticks(range(len(arms)), arms, rotation=20)
    per_job.set_title("Per job, submitted to finished")
    fig.savefig(path, dpi=DPI)


def cost_axis(summary, arms) -> tuple[str, str]:
    """USD per frame where any arm spent money; the images generated per frame otherwise."""
    if any(summary["by_arm"][a]["cost"]["usd_per_frame"] for a in arms):
        return "usd_per_frame", "estimated USD per frame"
    return "images_per_frame", "images generated per frame (ledger; no USD spent)"


def plot_cost_quality(summary, arms, path: Path) -> None:
    key, label = cost_axis(summary, arms)
    fig = Figure(figsize=(5.2, 4), layout="constrained")
    ax = fig.subplots()
    costs = [c for c in (summary["by_arm"][a]["cost"][key] for a in arms) if c is not None]
    dodge = 0.02 * ((max(costs) - min(costs)) or 1.0) if costs else 0.0  # arms at the same cost stay apart
    for i, arm in enumerate(arms):
        data = summary["by_arm"][arm]
        stat, cost = data["metrics"]["overall"], data["cost"][key]
        if stat["mean"] is None or cost is None:
            continue
        x = cost + (i - (len(arms) - 1) / 2) * dodge
        ax.errorbar(x, stat["mean"], yerr=[[stat["mean"] - stat["ci95"][0]], [stat["ci95"][1] - stat["mean"]]],
                    fmt="o", capsize=3, color=f"C{i}", label=arm)
    ax.set_xlabel(label)
    ax.set_ylabel("overall (mean, 95% CI)")
    ax.set_title("Cost against quality")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.savefig(path, dpi=DPI)


PLOTS = {
    "metrics.png": ("Score distributions per arm", lambda rows, summary, arms, path: plot_metrics(rows, arms, path)),
    "paired_overall.png": ("Paired overall score: baseline vs each arm",
                           lambda rows, summary, arms, path: plot_paired(rows, arms, path)),
    "consistency.png": ("Consistency between chained frames",
                        lambda rows, summary, arms, path: plot_consistency(rows, arms, path)),
    "latency.png": ("Latency per stage", lambda rows, summary, arms, path: plot_latency(summary, arms, path)),
    "cost_quality.png": ("Cost against quality",
                         lambda rows, summary, arms, path: plot_cost_quality(summary, arms, path)),
}


def write_samples(store: ArtifactStore, rows: list[dict], arms: list[str], out: Path, count: int) -> list[dict]:
    """Thumbnails of the same frames under every arm, for frames spread evenly over the run."""
    complete = {}
    for row in rows:
        complete.setdefault(frame_key(row), {})[row["arm"]] = row
    keys = [k for k, by_arm in complete.items() if all(by_arm.get(a, {}).get("image_key") for a in arms)]
    chosen = [keys[int(i)] for i in np.linspace(0, len(keys) - 1, min(count, len(keys)))] if keys else []
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for n, key in enumerate(chosen):
        cells = []
        for arm in arms:
            row = complete[key][arm]
            image = Image.open(io.BytesIO(store.get(row["image_key"]))).convert("RGB")
            image.thumbnail((THUMB_WIDTH, THUMB_WIDTH))
            name = f"samples/{n:02d}_{arm}.jpg"
            image.save(out / name, quality=85)
            cells.append({"arm": arm, "src": name, "overall": row["scores"]["overall"]})
        first = complete[key][arms[0]]
        samples.append({"label": f"{first['item']} · {first['frame']} · repeat {first['repeat']}",
                        "prompt": first["prompt"], "cells": cells})
    return samples


def _fmt(stat: dict, digits: int = 1) -> str:
    if not stat or stat["mean"] is None:
        return "–"
    low, high = stat["ci95"]
    return f"{stat['mean']:.{digits}f} <small>[{low:.{digits}f}, {high:.{digits}f}]</small>"


def caveats(summary: dict) -> list[str]:
    """What the numbers are not, said at the top of the page (and in summary.json)."""
    found = [HEURISTIC_CAVEAT] if summary["scorer"]["name"] == "heuristic" else []
    offline = summary["offline"]
    stages = " and ".join([", ".join(offline[:-1]), offline[-1]] if len(offline) > 1 else offline)
    return found + ([OFFLINE_CAVEAT.format(stages=stages)] if stages else [])


def render_html(summary: dict, samples: list[dict]) -> str:
    arms = summary["arms"]
    e = html.escape
    scorer = summary["scorer"]
    header = "".join(f'<p class="caveat">{e(text)}</p>' for text in caveats(summary))
    providers = "; ".join(f"{arm}: {e(', '.join(p))}" for arm, p in summary["providers"].items())
    head_row = "".join(f"<th>{e(a)}</th>" for a in arms)

    def row(label: str, cell) -> str:
        return f"<tr><th>{e(label)}</th>" + "".join(f"<td>{cell(summary['by_arm'][a])}</td>" for a in arms) + "</tr>"

    def money(value, digits=4) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    table = [row("jobs (not finished)", lambda d: f"{d['jobs']} ({d['jobs_not_finished']})"),
             row("frames with an image", lambda d: f"{d['frames_with_image']} / {d['frames']}")]
    table += [row(f"{METRIC_LABELS[m]} (mean [95% CI])", lambda d, m=m: _fmt(d["metrics"][m])) for m in QUALITY_METRICS]
    table += [
        row("win rate vs baseline, per frame", lambda d: _fmt(d["win_rate_vs_baseline"], 2)
            if d["win_rate_vs_baseline"] else "–"),
        row("consistency: previous frame", lambda d: _fmt(d["consistency"]["previous"], 3)),
        row("consistency: reference", lambda d: _fmt(d["consistency"]["reference"], 3)),
        row("frames judged (failed)", lambda d: f"{d['judge']['frames_judged']} / {d['judge']['of']} "
            f"({d['judge']['failed']})"),
        row("judge agreed with the scores (of frames with a verdict)",
            lambda d: _fmt(d["judge"]["agreement_with_scores"], 2)),
        row("judge: no verdict (orders disagreed or tied) / overturned the scores",
            lambda d: f"{d['judge']['no_verdict']} / {d['judge']['overturned']}"),
        row("below quality threshold (re-scored)",
            lambda d: f"{d['below_threshold']['rescored']} / {d['below_threshold']['of']}"),
        row("below threshold at selection (warned)", lambda d: f"{d['below_threshold']['at_selection']} "
            f"({d['below_threshold']['at_selection_warned']})"),
    ]
    table += [row(f"latency per frame: {s} (s)", lambda d, s=s: _fmt(d["latency_s"]["per_frame"][s], 3))
              for s in STAGES]
    table += [row("latency per job (s)", lambda d: _fmt(d["latency_s"]["per_job"]["total"], 2)),
              row("USD per frame / per job", lambda d: f"{money(d['cost']['usd_per_frame'])} / "
                  f"{money(d['cost']['usd_per_job'])}"),
              row("images per frame", lambda d: money(d["cost"]["images_per_frame"], 2)),
              row("LLM tokens per frame", lambda d: money(d["cost"]["llm_tokens_per_frame"], 0)),
              row("judge calls / tokens per frame", lambda d: f"{money(d['cost']['judge_calls_per_frame'], 2)} / "
                  f"{money(d['cost']['judge_tokens_per_frame'], 0)}")]
    errors = "".join(f"<li>{e(arm)}: {e(error)}</li>" for arm in arms for error in summary["by_arm"][arm]["job_errors"])
    errors = f"<h3>Jobs that did not finish</h3><ul>{errors}</ul>" if errors else ""
    plots = "".join(f'<h3>{e(title)}</h3><img src="plots/{name}" alt="{e(title)}">'
                    for name, (title, _) in PLOTS.items())
    grid = "".join(
        f"<tr><th>{e(s['label'])}<br><small>{e(s['prompt'])}</small></th>"
        + "".join(f'<td><img src="{c["src"]}" alt="{e(c["arm"])}"><br>overall {money(c["overall"], 1)}</td>'
                  for c in s["cells"])
        + "</tr>" for s in samples)
    weights = ", ".join(f"{scorer['weights'][m]:g} × {METRIC_LABELS[m]}" for m in QUALITY_METRICS[:-1])
    sets = ", ".join(f"{e(p['name'])} ({p['items']} items)" for p in summary["prompt_sets"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>framefleet evaluation</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}}
.caveat{{background:#fff3cd;border:2px solid #d39e00;padding:.6em;font-weight:bold}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
img{{max-width:100%}}</style></head><body>
<h1>framefleet evaluation: {e(' vs '.join(arms))}</h1>
{header}
<p><b>Re-scored by:</b> {e(scorer['name'])} scorer, one batch per frame (the frame under every arm), against the
frame's original prompt; overall = {e(weights)} (consistency is reported on its own).
<b>Consistency embedding:</b> {e(scorer['embedding'])}.<br>
<b>Providers:</b> {providers}. <b>Selection scorer in the fleet:</b> {e(', '.join(summary['selection_scorers']))}.<br>
<b>Prompt sets:</b> {sets}; repeats {summary['repeats']}; created {e(summary['created'])}.</p>
<h2>Summary</h2>
<table><tr><th></th>{head_row}</tr>{''.join(table)}</table>
{errors}
<p>Win rate: share of frames where the arm's re-scored overall beats baseline's for the same frame (ties count
half). Intervals: 95% percentile bootstrap of the mean ({summary['bootstrap_resamples']} resamples).</p>
<h2>Plots</h2>{plots}
<h2>Sample frames</h2>
<table><tr><th>frame</th>{head_row}</tr>{grid}</table>
</body></html>
"""


def write_report(store: ArtifactStore, rows: list[dict], summary: dict, out: Path, samples: int) -> Path:
    arms = summary["arms"]
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, (_, draw) in PLOTS.items():
        draw(rows, summary, arms, out / "plots" / name)
    page = out / "report.html"
    page.write_text(render_html(summary, write_samples(store, rows, arms, out, samples)), encoding="utf-8")
    return page
