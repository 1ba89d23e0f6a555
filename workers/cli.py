"""The ``framefleet`` command: demo, worker, submit, status, resume, cancel, flower, score, models."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from config.celery import QUEUES
from config.settings import get_settings
from tasks.records import JobStatus
from tasks.requests import RequestError, new_job_id, parse_request

console = Console(soft_wrap=True)

DEMO_CLIPS = [
    ("A lighthouse keeper climbs the spiral stairs at dusk, lantern in hand",
     "The keeper lights the great lamp at the top of the lighthouse, beam sweeping the sea"),
    ("A small fishing boat fights through storm waves toward the rocky coast",
     "The boat turns safely into the harbour, guided by the lighthouse beam"),
    ("At dawn the keeper walks down to the harbour where the fishermen wait",
     "The keeper and the fishermen share tea on the quay as the storm clears"),
    ("Children run along the cliff path flying a red kite above the lighthouse",
     "The red kite drifts over the calm sea at sunset"),
]


def demo_request(clips: int) -> dict:
    chosen = [DEMO_CLIPS[i % len(DEMO_CLIPS)] for i in range(clips)]
    return {"job_id": new_job_id(), "aspect_ratio": "16:9", "overrides": {"keep_traces": True},
            "clips": [{"start_prompt": s, "end_prompt": e} for s, e in chosen]}


def upload_reference(path: str, job_id: str) -> str:
    """A local image given on the command line goes to the store as the job's reference input,
    checked the same way the fleet checks every reference (pixel cap, formats, EXIF)."""
    from workers.inputs import normalise_image
    from workers.store import fleet_store

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise RequestError(f"reference: cannot read {path} ({error.strerror})") from None
    key = f"jobs/{job_id}/inputs/reference.png"
    fleet_store().put(key, normalise_image(data, "reference", get_settings()), "image/png")
    return key


def follow(job_id: str, poll_s: float = 0.2) -> JobStatus:
    """Show the job's progress bars until it is done."""
    from workers.client import job_status

    with Progress(TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as progress:
        status = job_status(job_id)
        total = max(status.frames_total, 1)
        bars = {
            "enhance": progress.add_task("Enhance prompts (llm)", total=total, detail=""),
            "frames": progress.add_task("Frames selected", total=total, detail=""),
            "overall": progress.add_task("Job", total=100, detail=""),
        }
        while True:
            status = job_status(job_id)
            progress.update(bars["enhance"], completed=status.prompts_enhanced)
            progress.update(bars["frames"], completed=status.frames_done, detail=status.current_frame or "")
            progress.update(bars["overall"], completed=status.percent, detail=status.message)
            if status.state == "done":
                return status
            time.sleep(poll_s)


def print_result(job_id: str) -> None:
    from workers.store import fleet_store

    store = fleet_store()
    manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
    console.print(f"\n[bold]Job {job_id}: {manifest['status']}[/bold] (scorer: {manifest['scorer']})")
    for frame in manifest["frames"]:
        selected = frame["selected"]
        where = store.location(selected["frame_key"]) if selected else "no image"
        score = f"{selected['overall']:.1f}" if selected and selected["overall"] is not None else "-"
        console.print(f"  {frame['name']:<16} overall {score:>5}  {where}")
    console.print(f"Candidates: {store.location(f'jobs/{job_id}/variations')}")
    console.print(f"Manifest:   {store.location(f'jobs/{job_id}/manifest.json')}")
    for kind, key in manifest.get("contact_sheet", {}).items():
        console.print(f"Contact sheet ({kind}): {store.location(key)}")
    if store.list(f"traces/{job_id}"):
        console.print(f"Traces:     {store.location(f'traces/{job_id}')}")
    for warning in manifest["warnings"]:
        console.print(f"  [yellow]warning[/yellow] {warning}")


def _raise_on_sigterm(*_) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.fleet import Fleet
    from workers.local_redis import LocalRedis

    out = Path(args.out or "output").resolve()
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    with ExitStack() as stack:
        env: dict[str, str] = {}
        if args.out or not os.environ.get("FRAMEFLEET_STORE_URL"):
            env["FRAMEFLEET_STORE_URL"] = f"file://{out}"
        embedded = not get_settings().broker_url
        if embedded:
            redis_server = stack.enter_context(LocalRedis())
            env["FRAMEFLEET_BROKER_URL"] = redis_server.url
            console.print(f"Started Redis on {redis_server.url}")
        os.environ.update(env)
        get_settings.cache_clear()
        from workers.app import configure

        app = configure()
        if embedded:
            console.print(f"Starting one worker per queue ({', '.join(QUEUES)}); logs in {out / 'logs'}")
            stack.enter_context(Fleet(env, log_dir=out / "logs"))
        request = json.loads(Path(args.request).read_text()) if args.request else demo_request(args.clips)
        request.setdefault("job_id", new_job_id())
        kind = args.kind
        if args.reference:
            field = "reference_image" if kind == "storyboard" else "initial_reference_image"
            request[field] = upload_reference(args.reference, request["job_id"])
        parse_request(kind, request)
        from workers.client import submit_job

        job_id = submit_job(app, kind, request)
        console.print(f"Submitted {kind} job {job_id}")
        status = follow(job_id)
        print_result(job_id)
        return 0 if status.outcome in ("succeeded", "partial") else 1


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.app import app
    from workers.fleet import worker_argv

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise RequestError(f"queues: unknown {unknown}, expected some of {list(QUEUES)}")
    app.worker_main(argv=worker_argv(queues, args.pool, args.concurrency, args.name, args.loglevel))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from workers.app import app
    from workers.client import submit_job

    request = json.loads(Path(args.file).read_text())
    if not isinstance(request, dict):
        raise RequestError("request: expected a JSON object")
    request.setdefault("job_id", new_job_id())
    if args.reference:
        field = "reference_image" if args.kind == "storyboard" else "initial_reference_image"
        request[field] = upload_reference(args.reference, request["job_id"])
    parse_request(args.kind, request)
    job_id = submit_job(app, args.kind, request)
    console.print(job_id)
    if args.wait:
        status = follow(job_id)
        print_result(job_id)
        return 0 if status.outcome in ("succeeded", "partial") else 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from workers.client import job_status

    if args.follow:
        follow(args.job_id)
    status = job_status(args.job_id)
    if args.json:
        print(status.model_dump_json(indent=2))
        return 0
    console.print(f"{status.job_id} [{status.kind}] {status.state} {status.percent:.0f}% — {status.message}"
                  f" (frames {status.frames_done}/{status.frames_total})")
    stalled = status.stalled_for(time.time())
    if stalled > get_settings().stall_after_s:
        console.print(f"[yellow]no progress for {stalled:.0f}s: `framefleet resume {status.job_id}`[/yellow]")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from workers.app import app
    from workers.client import resume_job

    console.print(resume_job(app, args.job_id))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from workers.app import app
    from workers.client import cancel_job

    console.print(cancel_job(app, args.job_id))
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    """Flower on the configured broker: basic auth from settings, or loopback only."""
    settings = get_settings()
    if not settings.broker_url:
        raise RequestError("broker_url: FRAMEFLEET_BROKER_URL is not set")
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "flower", f"--port={args.port or settings.flower_port}"]
    env = dict(os.environ)
    if args.local_only:
        argv.append("--address=127.0.0.1")
    elif settings.flower_basic_auth is None:
        raise RequestError("flower_basic_auth: set FRAMEFLEET_FLOWER_BASIC_AUTH=user:password, or pass --local-only")
    else:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()  # not on the command line
    return subprocess.call(argv, env=env)


def cmd_score(args: argparse.Namespace) -> int:
    """Score local image files with the same scorer a gpu worker would load."""
    from PIL import Image

    from scoring import overall_score
    from workers.bootstrap import process_scorer

    images = []
    for path in args.images:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (OSError, ValueError) as error:
            raise RequestError(f"images: {path} is not a readable image ({error})") from None
    scorer = process_scorer()
    weights = get_settings().score_weights.model_dump()
    rows = []
    for path, scores in zip(args.images, scorer.score(args.prompt, images), strict=True):
        rows.append({"image": path, "scorer": scorer.name, **scores.model_dump(exclude={"consistency"}),
                     "overall": overall_score(scores, weights)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            console.print(f"{row['image']}: overall {row['overall']}  pickscore {row['pickscore']}  "
                          f"clip {row['clip_score']}  aesthetic {row['aesthetic']}  ({row['scorer']})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from scoring.weights import check_sources, download_all

    sources = get_settings().model_sources()
    if args.action == "download":
        for name, value in download_all(sources, Path(args.dir)).items():
            print(f"{name}={value}")
        return 0
    report = check_sources(sources)
    for model, where in report.items():
        console.print(f"{model:<20} {where}")
    return 1 if any(v.startswith("missing") for v in report.values()) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framefleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a storyboard on a local Redis and local workers")
    demo.add_argument("--clips", type=int, default=3)
    demo.add_argument("--kind", choices=("storyboard", "references"), default="storyboard")
    demo.add_argument("--reference", help="a local image to use as the reference image")
    demo.add_argument("--request", help="a request JSON file instead of the built-in story")
    demo.add_argument("--out", help="local output folder (default ./output)")
    demo.set_defaults(func=cmd_demo)

    worker = sub.add_parser("worker", help="run a worker for some queues")
    worker.add_argument("--queues", "-Q", required=True, help=f"comma-separated, of {', '.join(QUEUES)}")
    worker.add_argument("--pool", "-P", help="prefork | threads | solo (default: the queue's shape)")
    worker.add_argument("--concurrency", "-c", type=int)
    worker.add_argument("--name", "-n")
    worker.add_argument("--loglevel", "-l", default="INFO")
    worker.set_defaults(func=cmd_worker)

    submit = sub.add_parser("submit", help="submit a job request (JSON file) to the configured fleet")
    submit.add_argument("kind", choices=("storyboard", "references"))
    submit.add_argument("file")
    submit.add_argument("--reference", help="a local image to upload as the reference image")
    submit.add_argument("--wait", action="store_true")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="show a job's progress")
    status.add_argument("job_id")
    status.add_argument("--follow", action="store_true")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    resume = sub.add_parser("resume", help="continue a job from its stored state")
    resume.add_argument("job_id")
    resume.set_defaults(func=cmd_resume)

    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=cmd_cancel)

    flower = sub.add_parser("flower", help="run Flower on the configured broker")
    flower.add_argument("--port", type=int)
    flower.add_argument("--local-only", action="store_true", help="bind 127.0.0.1 and run without auth")
    flower.set_defaults(func=cmd_flower)

    score = sub.add_parser("score", help="score local images against a prompt")
    score.add_argument("--prompt", required=True)
    score.add_argument("images", nargs="+")
    score.add_argument("--json", action="store_true")
    score.set_defaults(func=cmd_score)

    models = sub.add_parser("models", help="check or prefetch the scoring models' weights")
    models.add_argument("action", choices=("check", "download"))
    models.add_argument("--dir", help="with download: where to put the weights", default="models")
    models.set_defaults(func=cmd_models)

    from workers.evaluation.command import add_eval_command

    add_eval_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RequestError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopped everything this command started[/yellow]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
