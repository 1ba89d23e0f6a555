"""Find the processes a test session started, by an environment marker every child inherits.

A process keeps the environment it was started with, and so do its children, also once they
are orphaned and reparented to init; /proc/{pid}/environ shows it. pytest itself sets the marker
after it started, so its own /proc entry does not carry it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# Not FRAMEFLEET_*: tests that start the CLI with a clean FRAMEFLEET_ environment keep it.
MARKER = "TEST_SESSION_MARKER"


def marked_processes(value: str, name: str = MARKER) -> dict[int, str]:
    """pid → command line of every live process started with name=value (zombies have no environ)."""
    entry = f"\0{name}={value}\0".encode()
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ, cmdline = (proc / "environ").read_bytes(), (proc / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if entry in b"\0" + environ and int(proc.name) != os.getpid():
            found[int(proc.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def leftover_processes(value: str, name: str = MARKER, ignore: set[int] = frozenset(),
                       grace_s: float = 5.0) -> dict[int, str]:
    """The marked processes still alive after a grace for those being stopped or reaped."""
    deadline = time.monotonic() + grace_s
    while True:
        left = {pid: cmd for pid, cmd in marked_processes(value, name).items() if pid not in ignore}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
