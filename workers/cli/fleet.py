"""Commands that run the fleet: demo (a local Redis, workers and one job), worker, flower."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from framefleet.config.celery import QUEUES
from framefleet.config.settings import get_settings
from framefleet.tasks.job.requests import RequestError, new_job_id
from framefleet.workers.cli.common import cli_store, console
from framefleet.workers.cli.jobs import follow, prepare_request, print_result, read_request, uploaded_reference
from framefleet.workers.client import check_connection, submit_job

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
    argv = ["--app", "framefleet.workers.app",
            *worker_argv(queues, args.pool, args.concurrency, args.name, args.loglevel)]
    return celery_command.main(args=argv, standalone_mode=False) or 0


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
    argv = [sys.executable, "-m", "celery", "-A", "framefleet.workers.app", "flower",
            f"--port={args.port or settings.flower_port}"]
    if address is not None:
        argv.append(f"--address={address}")
    env = dict(os.environ)
    if not args.local_only:
        if settings.flower_basic_auth is None:
            raise RequestError("flower_basic_auth: set FRAMEFLEET_FLOWER_BASIC_AUTH=user:password, "
                               "or pass --local-only")
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()  # not on the command line
    # Become Flower rather than wait on it: a signal to this process then reaches Flower itself,
    # and no Flower is left orphaned when whoever started `framefleet flower` stops it.
    os.execvpe(argv[0], argv, env)


def register(sub) -> None:
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
    flower = sub.add_parser("flower", help="run Flower on the configured broker")
    flower.add_argument("--port", type=int)
    flower.add_argument("--address", metavar="ADDR",
                        help="the interface to listen on (default: every interface); 127.0.0.1 keeps it "
                             "on this machine")
    flower.add_argument("--local-only", action="store_true",
                        help="listen on 127.0.0.1 (or a loopback --address) and run without auth")
    flower.set_defaults(func=cmd_flower)
