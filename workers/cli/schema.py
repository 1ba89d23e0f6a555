"""``framefleet schema``: the contracts with a main app as JSON Schema."""

from __future__ import annotations

import argparse
import json

from framefleet.tasks.job.records import TASK_RESULTS, CompletionCallback, JobEvent, JobStatus, Manifest
from framefleet.tasks.job.requests import REQUEST_MODELS, RequestError
from pydantic import TypeAdapter


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


def register(sub) -> None:
    schema = sub.add_parser("schema", help="print the JSON Schema of a request, a task's result, the manifest, "
                                           "the callback, a progress event or the status")
    schema.add_argument("contract", choices=("request", "result", "manifest", "callback", "event", "status"))
    schema.add_argument("kind", nargs="?", choices=(*REQUEST_MODELS, *TASK_RESULTS),
                        help="with request: the job kind; with result: the task")
    schema.set_defaults(func=cmd_schema)
