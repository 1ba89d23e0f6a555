"""The `framefleet eval` command: prompt sets in, jobs per arm, re-scoring, summary and report out."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from framefleet.tasks.job.requests import RequestError
from framefleet.workers.evaluation import ARMS, BASELINE


def add_eval_command(sub) -> None:
    """Register ``framefleet eval`` on the CLI's subparsers."""
    parser = sub.add_parser("eval", help="compare arms (baseline, enhanced, ...) on prompt sets; writes a report")
    parser.add_argument("--prompts", action="append", type=Path,
                        help="a prompt set: storyboards .jsonl, a .tsv with a Prompt column, or text, one prompt "
                             "a line (repeatable; default: the shipped storyboards)")
    parser.add_argument("--arms", default="baseline,enhanced", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--repeats", type=int, default=1, help="run every item this many times per arm")
    parser.add_argument("--limit", type=int, help="only the first N items of each prompt set")
    parser.add_argument("--parallel", type=int, default=4, help="jobs in flight at once")
    parser.add_argument("--job-timeout", type=float, default=3600.0, help="seconds before a job is cancelled")
    parser.add_argument("--samples", type=int, default=6, help="frames in the report's sample grid")
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.json and report.html")
    parser.set_defaults(func=cmd_eval)


def parse_arms(text: str) -> list[str]:
    arms = list(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise RequestError(f"arms: unknown {unknown}, expected some of {list(ARMS)}")
    if BASELINE not in arms or len(arms) < 2:
        raise RequestError("arms: give baseline and at least one other arm (every comparison is against baseline)")
    return [BASELINE] + [a for a in arms if a != BASELINE]


def cmd_eval(args: argparse.Namespace) -> int:
    from framefleet.config.settings import get_settings
    from framefleet.workers.embedded import client_fleet
    from framefleet.workers.evaluation.prompts import load_prompt_set, shipped_storyboards
    from framefleet.workers.evaluation.runner import plan_runs, run_jobs
    from rich.console import Console
    from rich.progress import Progress

    for name in ("repeats", "parallel", "samples"):
        if getattr(args, name) < 1:
            raise RequestError(f"{name}: must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise RequestError("limit: must be at least 1")
    arms = parse_arms(args.arms)
    paths = args.prompts or [shipped_storyboards()]
    sets = {path: load_prompt_set(path, args.limit) for path in paths}  # every item checked before any job
    items = [item for loaded in sets.values() for item in loaded]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console(soft_wrap=True)
    # An embedded fleet keeps its jobs next to the report, unless a store is configured.
    embedded_store = None if get_settings().broker_url or os.environ.get("FRAMEFLEET_STORE_URL") else out / "store"
    with client_fleet(embedded_store, out / "logs", console.print) as app:
        from framefleet.tasks.artifacts.store import fleet_store
        from framefleet.tasks.runtime.bootstrap import process_scorer

        store = fleet_store()
        scorer = process_scorer()  # loaded first: a scorer that cannot load must not cost a whole run
        runs = plan_runs(items, arms, args.repeats)
        console.print(f"{len(items)} items × {len(arms)} arms × {args.repeats} repeats = {len(runs)} jobs")
        with Progress(console=console) as progress:
            bar = progress.add_task("Jobs", total=len(runs))
            run_jobs(app, store, runs, args.parallel, args.job_timeout, lambda run: progress.advance(bar))
        console.print(f"Re-scoring every arm's final frames with the {scorer.name} scorer")
        prompt_sets = [{"name": path.stem, "path": str(path), "items": len(loaded)} for path, loaded in sets.items()]
        summary, rows = evaluate(store, scorer, runs, arms, args.repeats, prompt_sets,
                                 get_settings().score_weights.model_dump())
        from framefleet.workers.evaluation.report import write_report

        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        (out / "frames.json").write_text(json.dumps(rows, indent=1))
        page = write_report(store, rows, summary, out, args.samples)
    for arm in arms:
        stat = summary["by_arm"][arm]["metrics"]["overall"]
        win = summary["by_arm"][arm]["win_rate_vs_baseline"]
        line = f"  {arm:<13} overall {_mean(stat)}"
        console.print(line + (f"  win rate vs baseline {_mean(win, 2)}" if win else ""))
        if (judge := summary["by_arm"][arm]["judge"])["frames_judged"]:
            console.print(f"    judged {judge['frames_judged']} of {judge['of']} frames; agreed with the scores "
                          f"{_mean(judge['agreement_with_scores'], 2)}; no verdict {judge['no_verdict']}")
        for error in summary["by_arm"][arm]["job_errors"]:
            console.print(f"    [yellow]{error}[/yellow]")
    console.print(f"Summary: {out / 'summary.json'}\nReport:  {page}")
    return 0 if all(r.manifest for r in runs) else 1


def _mean(stat: dict, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.{digits}f} [{stat['ci95'][0]:.{digits}f}, {stat['ci95'][1]:.{digits}f}]"


def evaluate(store, scorer, runs, arms: list[str], repeats: int, prompt_sets: list[dict],
             weights: dict) -> tuple[dict, list[dict]]:
    """Re-score and measure finished runs: the summary and one row per frame and arm."""
    from framefleet.scoring.similarity import embedding_name
    from framefleet.workers.evaluation.metrics import RESAMPLES, arm_summary
    from framefleet.workers.evaluation.report import caveats
    from framefleet.workers.evaluation.runner import add_consistency, frame_rows, rescore

    for run in runs:
        run.frames = frame_rows(run)
        add_consistency(store, scorer, run)
    rows = rescore(store, scorer, runs, weights)
    providers = {arm: sorted({_provider(stage, name, r.manifest) for r in runs if r.arm == arm and r.manifest
                              for stage, name in r.manifest["providers"].items()}) for arm in arms}
    summary = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arms": arms,
        "repeats": repeats,
        "prompt_sets": prompt_sets,
        "scorer": {"name": scorer.name, "weights": weights, "embedding": embedding_name(scorer),
                   "prompt": "original", "batches": len({r["rescore_batch"] for r in rows if r["image_key"]})},
        "providers": providers,
        "offline": sorted({r.split()[0] for names in providers.values() for r in names if r.endswith(" offline")}),
        "selection_scorers": sorted({r["selection_scorer"] for r in rows if r["selection_scorer"]}),
        "bootstrap_resamples": RESAMPLES,
        "by_arm": {arm: arm_summary(arm, runs, rows, ARMS[arm]) for arm in arms},
    }
    summary["caveats"] = caveats(summary)
    return summary, rows


def _provider(stage: str, name: str, manifest: dict) -> str:
    model = f" ({manifest['config']['image_model']})" if stage == "images" and name == "replicate" else ""
    return f"{stage} {name}{model}"
