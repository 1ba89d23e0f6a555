"""The ``framefleet`` command: demo, worker, submit, status, resume, cancel, choose, regenerate, jobs,
flower, exporter, score, models, schema, eval (one module per group of commands).

An ordinary mistake (a bad request, an unreachable broker, an unknown job id, ...) is one line on
stderr and exit status 2; ``framefleet --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse

from framefleet.workers.cli import exporter, fleet, jobs, models, schema
from framefleet.workers.cli.common import ORDINARY_ERRORS, errors, load_settings
from framefleet.workers.cli.fleet import demo_request
from framefleet.workers.cli.jobs import prepare_request, read_request
from framefleet.workers.cli.schema import contract_schema
from rich.text import Text

__all__ = ["build_parser", "contract_schema", "demo_request", "main", "prepare_request", "read_request"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framefleet", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (fleet, exporter, jobs, models, schema):
        group.register(sub)
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
