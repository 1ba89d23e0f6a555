"""Commands on jobs: submit, status, resume, cancel, choose, regenerate, jobs; and following a
job's progress until it is done."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from framefleet.config.settings import get_settings
from framefleet.tasks.job.records import MAX_LIST_LIMIT, JobStatus
from framefleet.tasks.job.requests import REFERENCE_FIELDS, RequestError, new_job_id, parse_request
from framefleet.tasks.providers.adapters import image_model_registry
from framefleet.workers.cli.common import cli_store, console
from framefleet.workers.client import (
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
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn


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
    from framefleet.tasks.artifacts.inputs import normalise_image
    from framefleet.tasks.job.requests import precheck_request

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
    parse_request(kind, request, image_models=image_model_registry())
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


def register(sub) -> None:
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
