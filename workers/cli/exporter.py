"""``framefleet exporter``: the fleet's Prometheus metrics (workers/exporter.py, docs/operations.md)."""

from __future__ import annotations

import argparse
import signal
import threading

from framefleet.config.settings import get_settings
from framefleet.tasks.job.errors import RequestError
from framefleet.workers.cli.common import console
from framefleet.workers.client import check_connection


def cmd_exporter(args: argparse.Namespace) -> int:
    from framefleet.workers.app import app
    from framefleet.workers.exporter import serve

    if not 1 <= args.port <= 65535:
        raise RequestError(f"port: expected 1 to 65535, got {args.port}")
    settings = get_settings()
    check_connection(settings)  # an unreachable Redis is one line now, not an empty page later
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    console.print(f"framefleet exporter: http://{args.address}:{args.port}/metrics")
    try:
        serve(settings, app, args.port, args.address, stop)
    except OSError as error:  # the port is taken, or the address is not this machine's
        raise RequestError(f"port: cannot listen on {args.address}:{args.port} ({error.strerror or error})") from None
    return 0


def register(sub) -> None:
    exporter = sub.add_parser("exporter", help="serve the fleet's Prometheus metrics at /metrics")
    exporter.add_argument("--port", type=int, required=True)
    exporter.add_argument("--address", metavar="ADDR", default="0.0.0.0",
                          help="the interface to listen on (default: every interface); 127.0.0.1 keeps it "
                               "on this machine")
    exporter.set_defaults(func=cmd_exporter)
