"""The ``framefleet`` command: demo, worker, submit, status, resume, cancel, flower, score, models, schema.

An ordinary mistake (a bad request, an unreachable broker, an unknown job id, ...) is one line on
stderr and exit status 2; ``framefleet --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from framefleet.config.celery import QUEUES
from framefleet.config.settings import Settings, get_settings
from pydantic import TypeAdapter

from framefleet.tasks.records import MAX_LIST_LIMIT, TASK_RESULTS, CompletionCallback, JobEvent, JobStatus, Manifest
from framefleet.tasks.requests import REFERENCE_FIELDS, REQUEST_MODELS, RequestError, new_job_id, parse_request
from framefleet.tasks.errors import ERRORS
from framefleet.workers.client import (
    FleetUnavailable,
    cancel_job,
    check_connection,
    choose_candidate,
    job_status,
    list_jobs,
    regenerate_frame,
    resume_job,
    status_updates,
    submit_job,
)

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True, highlight=False)

# The mistakes a user makes: reported as one line, never a traceback (unless --debug).
ORDINARY_ERRORS = (*ERRORS, FleetUnavailable, TimeoutError)

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


def load_settings() -> Settings:
    """The settings, with a bad environment value reported as the variable that holds it."""
    try:
        return get_settings()
    except ValidationError as error:
        parts = []
        for item in error.errors():
            field, *rest = [str(p) for p in item["loc"]] or ["settings"]
            name = f"FRAMEFLEET_{field.upper()}" if field in Settings.model_fields else field
            parts.append(f"{'.'.join([name, *rest])}: {item['msg']}")
        raise RequestError("; ".join(parts)) from error
    except SettingsError as error:
        raise RequestError(f"settings: {error}") from error


def cli_store():
    """The configured artifact store; a bad ``FRAMEFLEET_STORE_URL`` is a one-line error."""
    from framefleet.tasks.store import fleet_store

    try:
        return fleet_store()
    except ValueError as error:  # open_store names store_url and the scheme it does not support
        raise RequestError(str(error)) from error


def read_request(path: str) -> dict:
    """The request file as a JSON object; a file over ``max_request_bytes`` is refused unread."""
    limit = get_settings().max_request_bytes
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)  # one byte more tells "too large" without reading all of it
    except OSError as error:
        raise RequestError(f"request: cannot read {path} ({error.strerror})") from None
    if len(data) > limit:
        raise RequestError(f"request: {path} has more than {limit} bytes, the limit is {limit} "
                           f"(FRAMEFLEET_MAX_REQUEST_BYTES)")
    try:
        request = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(f"request: {path} is not valid JSON ({error})") from None
    if not isinstance(request, dict):
        raise RequestError(f"request: {path} holds {type(request).__name__}, expected a JSON object")
    return request


def prepare_request(kind: str, request: dict, reference: str | None) -> bytes | None:
    """Validate the request (and the image given with --reference) before anything is written.

    A local reference image is checked the way the fleet checks every reference (pixel cap,
    formats, EXIF) and gets a fresh upload key that no job owns; returns its PNG bytes.
    """
    from framefleet.tasks.inputs import normalise_image
    from framefleet.tasks.requests import precheck_request

    precheck_request(kind, request, get_settings())  # an oversized request: refused before the image is read
    request.setdefault("job_id", new_job_id())
    png = None
    if reference:
        try:
            data = Path(reference).read_bytes()
        except OSError as error:
            raise RequestError(f"reference: cannot read {reference} ({error.strerror})") from None
        png = normalise_image(data, "reference", get_settings())
        request[REFERENCE_FIELDS[kind]] = f"uploads/{uuid.uuid4().hex}/reference.png"
    parse_request(kind, request)
    return png


@contextmanager
def uploaded_reference(kind: str, request: dict, png: bytes | None) -> Iterator[None]:
    """The reference stays in the store while the fleet creates the job, which copies it into the
    job's own ``jobs/{job}/inputs/reference.png``; then it goes, whatever the fleet answered, so a
    refused request leaves nothing behind and a job id in use never has its reference swapped."""
    if png is None:
        yield
        return
    store, key = cli_store(), request[REFERENCE_FIELDS[kind]]
    store.put(key, png, "image/png")
    try:
        yield
    finally:
        store.delete_prefix(key.rsplit("/", 1)[0])


def follow(job_id: str) -> JobStatus:
    """Show the job's progress bars until it is done (updated from the job's events channel)."""
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as progress:
        bars = None
        for status in status_updates(job_id):
            if bars is None:
                total = max(status.frames_total, 1)
                bars = {
                    "enhance": progress.add_task("Enhance prompts (llm)", total=total, detail=""),
                    "frames": progress.add_task("Frames selected", total=total, detail=""),
                    "overall": progress.add_task("Job", total=100, detail=""),
                }
            progress.update(bars["enhance"], completed=min(status.prompts_enhanced, status.frames_total))
            progress.update(bars["frames"], completed=status.frames_done, detail=status.current_frame or "")
            progress.update(bars["overall"], completed=status.percent,
                            detail=f"r{status.revision} {status.message}" if status.revision else status.message)
        return status


def print_result(job_id: str) -> None:
    store = cli_store()
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



def cmd_demo(args: argparse.Namespace) -> int:
    from framefleet.workers.embedded import client_fleet

    out = Path(args.out or "output").resolve()
    request = read_request(args.request) if args.request else demo_request(args.clips)
    reference_png = prepare_request(args.kind, request, args.reference)
    store_root = out if args.out or not os.environ.get("FRAMEFLEET_STORE_URL") else None
    if store_root is None:
        cli_store()  # a bad store URL is reported now, not by every worker the demo would start
    embedded = not get_settings().broker_url
    with client_fleet(store_root, out / "logs", console.print) as app:
        if not embedded:
            check_connection()
        with uploaded_reference(args.kind, request, reference_png):
            job_id = submit_job(app, args.kind, request)
        console.print(f"Submitted {args.kind} job {job_id}")
        status = follow(job_id)
        print_result(job_id)
        return 0 if status.outcome in ("succeeded", "partial") else 1


def cmd_worker(args: argparse.Namespace) -> int:
    from celery.bin.celery import celery as celery_command

    from framefleet.workers.fleet import worker_argv

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise RequestError(f"queues: unknown {unknown}, expected some of {list(QUEUES)}")
    # Not app.worker_main(): Celery.start() drops the exit code click returns, so a worker ended by
    # "Unrecoverable error" would exit 0 and its supervisor would not see the failure.
    argv = ["--app", "framefleet.workers.app", *worker_argv(queues, args.pool, args.concurrency, args.name, args.loglevel)]
    return celery_command.main(args=argv, standalone_mode=False) or 0


def cmd_submit(args: argparse.Namespace) -> int:
    from framefleet.workers.app import app

    request = read_request(args.file)
    reference_png = prepare_request(args.kind, request, args.reference)
    check_connection()
    with uploaded_reference(args.kind, request, reference_png):
        job_id = submit_job(app, args.kind, request)
    console.print(job_id)
    if args.wait:
        status = follow(job_id)
        print_result(job_id)
        return 0 if status.outcome in ("succeeded", "partial") else 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    check_connection()
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
    from framefleet.workers.app import app

    check_connection()
    console.print(resume_job(app, args.job_id))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from framefleet.workers.app import app

    check_connection()
    console.print(cancel_job(app, args.job_id))
    return 0


def cmd_choose(args: argparse.Namespace) -> int:
    from framefleet.workers.app import app

    check_connection()
    console.print(choose_candidate(app, args.job_id, args.frame, args.index))
    if args.wait:
        return _wait_for_revision(args.job_id)
    return 0


def cmd_regenerate(args: argparse.Namespace) -> int:
    from framefleet.workers.app import app

    check_connection()
    options = {"cascade": not args.no_cascade}
    if args.prompt is not None:
        options["prompt"] = args.prompt
    if args.variations is not None:
        options["overrides"] = {"num_variations": args.variations}
    console.print(regenerate_frame(app, args.job_id, args.frame, options))
    if args.wait:
        return _wait_for_revision(args.job_id)
    return 0


def _wait_for_revision(job_id: str) -> int:
    status = follow(job_id)
    print_result(job_id)
    return 0 if status.outcome in ("succeeded", "partial") else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from framefleet.workers.app import app

    if not 1 <= args.limit <= MAX_LIST_LIMIT:
        raise RequestError(f"limit: expected a whole number from 1 to {MAX_LIST_LIMIT}, got {args.limit}")
    check_connection()
    rows = list_jobs(app, active_only=args.active, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        parked = f"  parked: {row['parked']}" if row["parked"] else ""
        console.print(f"{row['job_id']:<28} {row['kind'] or '-':<11} {row['state']:<8} r{row['revision']:<3} "
                      f"{row['outcome'] or '-':<10} {row['percent']:>5.0f}%  {row['stage']}{parked}")
    if not rows:
        console.print("no jobs" + (" running" if args.active else ""))
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    """Flower on the configured broker: basic auth from settings, or loopback only without it.

    It listens on every interface unless ``--address`` names one: in a container that is what its
    port mapping or Service reaches; on a host, ``--address 127.0.0.1`` keeps it on the machine.
    """
    import ipaddress

    settings = get_settings()
    if not settings.broker_url:
        raise RequestError("broker_url: FRAMEFLEET_BROKER_URL is not set")
    address = args.address
    if args.local_only:
        try:
            loopback = address is None or address == "localhost" or ipaddress.ip_address(address).is_loopback
        except ValueError:
            loopback = False
        if not loopback:  # no auth: never on an interface other machines reach
            raise RequestError(f"address: --local-only runs Flower without auth, on loopback only, not {address!r}")
        address = address or "127.0.0.1"
    argv = [sys.executable, "-m", "celery", "-A", "framefleet.workers.app", "flower", f"--port={args.port or settings.flower_port}"]
    if address is not None:
        argv.append(f"--address={address}")
    env = dict(os.environ)
    if not args.local_only:
        if settings.flower_basic_auth is None:
            raise RequestError("flower_basic_auth: set FRAMEFLEET_FLOWER_BASIC_AUTH=user:password, or pass --local-only")
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()  # not on the command line
    # Become Flower rather than wait on it: a signal to this process then reaches Flower itself,
    # and no Flower is left orphaned when whoever started `framefleet flower` stops it.
    os.execvpe(argv[0], argv, env)


def cmd_score(args: argparse.Namespace) -> int:
    """Score local image files with the same scorer a gpu worker would load."""
    from PIL import Image

    from framefleet.scoring import overall_score
    from framefleet.tasks.bootstrap import process_scorer

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
    from framefleet.scoring.weights import check_sources, download_all

    sources = get_settings().model_sources()
    if args.action == "download":
        for name, value in download_all(sources, Path(args.dir)).items():
            print(f"{name}={value}")
        return 0
    report = check_sources(sources)
    for model, where in report.items():
        console.print(f"{model:<20} {where}")
    return 1 if any(v.startswith("missing") for v in report.values()) else 0


def cmd_schema(args: argparse.Namespace) -> int:
    """JSON Schema of the contracts with a main app, for apps in other languages or validating early."""
    print(json.dumps(contract_schema(args.contract, args.kind), indent=2))
    return 0


def contract_schema(contract: str, kind: str | None = None) -> dict:
    """The JSON Schema (draft 2020-12) of one contract: ``request KIND``, ``result TASK``,
    ``manifest``, ``callback``, ``event`` or ``status``."""
    named = {"request": REQUEST_MODELS, "result": TASK_RESULTS}
    if contract in named:
        if kind not in named[contract]:
            raise RequestError(f"kind: `framefleet schema {contract}` needs one of {sorted(named[contract])}")
        model = named[contract][kind]
        mode = "validation" if contract == "request" else "serialization"
        schema = TypeAdapter(model).json_schema(mode=mode)
    elif kind is not None:
        raise RequestError(f"kind: only `framefleet schema request` and `schema result` take a kind, not {contract}")
    else:
        model = {"manifest": Manifest, "callback": CompletionCallback, "event": JobEvent, "status": JobStatus}[contract]
        schema = model.model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framefleet", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
    flower.add_argument("--address", metavar="ADDR",
                        help="the interface to listen on (default: every interface); 127.0.0.1 keeps it on this machine")
    flower.add_argument("--local-only", action="store_true",
                        help="listen on 127.0.0.1 (or a loopback --address) and run without auth")
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

    choose = sub.add_parser("choose", help="make another candidate a frame's selection; later frames re-chain")
    choose.add_argument("job_id")
    choose.add_argument("frame")
    choose.add_argument("index", type=int, help="the candidate's variation index (v1 = 1)")
    choose.add_argument("--wait", action="store_true", help="follow the new revision until it is done")
    choose.set_defaults(func=cmd_choose)

    regenerate = sub.add_parser("regenerate", help="generate a frame again (and re-chain the frames after it)")
    regenerate.add_argument("job_id")
    regenerate.add_argument("frame")
    regenerate.add_argument("--prompt", help="a new original prompt (enhanced again)")
    regenerate.add_argument("--variations", type=int, help="this frame's number of variations")
    regenerate.add_argument("--no-cascade", action="store_true", help="change only this frame")
    regenerate.add_argument("--wait", action="store_true", help="follow the new revision until it is done")
    regenerate.set_defaults(func=cmd_regenerate)

    jobs = sub.add_parser("jobs", help="list recent jobs with state, revision and outcome")
    jobs.add_argument("--active", action="store_true", help="only jobs not done")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)

    schema = sub.add_parser("schema", help="print the JSON Schema of a request, a task's result, the manifest, "
                                           "the callback, a progress event or the status")
    schema.add_argument("contract", choices=("request", "result", "manifest", "callback", "event", "status"))
    schema.add_argument("kind", nargs="?", choices=(*REQUEST_MODELS, *TASK_RESULTS),
                        help="with request: the job kind; with result: the task")
    schema.set_defaults(func=cmd_schema)

    from framefleet.workers.evaluation.command import add_eval_command

    add_eval_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_settings()
        return args.func(args)
    except ORDINARY_ERRORS as error:
        if args.debug:
            raise
        errors.print(Text.assemble(("error: ", "red"), " ".join(str(error).split())))
        return 2
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted; stopped everything this command started[/yellow]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
