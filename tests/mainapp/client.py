"""What a main app's own processes (a web request, a shell) do with the fleet, one command per
run, answering JSON on stdout: `python -m tests.mainapp.client COMMAND [ARG ...]`.

versions                 the client's celery, kombu and redis versions; whether framefleet imports
submit REQUEST_JSON      send_task("framefleet.storyboard.create") and its result (the job id)
ping N                   a broadcast ping from this app; waits for N replies
probe QUEUE PRIORITY     send a message to QUEUE at PRIORITY (nobody consumes it)
"""

import importlib.util
import json
import sys

from tests.mainapp.app import app


def main(command: str, *args: str) -> object:
    if command == "versions":
        import celery
        import kombu
        import redis

        return {"celery": celery.__version__, "kombu": kombu.__version__, "redis": redis.__version__,
                "framefleet": importlib.util.find_spec("framefleet") is not None}
    if command == "submit":
        return app.send_task("framefleet.storyboard.create", args=[json.loads(args[0])]).get(timeout=60)
    if command == "ping":
        return app.control.inspect(timeout=30, limit=int(args[0])).ping() or {}
    if command == "probe":
        app.send_task("mainapp.probe", queue=args[0], priority=int(args[1]))
        return None
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
