"""`framefleet demo` as a user runs it: no broker configured, so it starts everything itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.integration
def test_demo_runs_a_storyboard_end_to_end_and_stops_what_it_started(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAMEFLEET_", "OPENAI_", "REPLICATE_"))}
    result = subprocess.run([sys.executable, "-m", "workers.cli", "demo", "--clips", "1", "--out", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Started Redis on redis://127.0.0.1:" in result.stdout
    (manifest_path,) = tmp_path.glob("jobs/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["status"] == "succeeded" and len(manifest["frames"]) == 2
    assert (tmp_path / manifest["contact_sheet"]["png"]).is_file()
    assert "Contact sheet (png)" in result.stdout and str(manifest_path) in result.stdout
    traces = list(tmp_path.glob("traces/*/clip_001_start/*"))
    assert any(p.name == "01_agent1_iteration_1.txt" for p in traces)  # the demo keeps its traces
    workers = subprocess.run(["pgrep", "-f", "celery -A workers.app worker"], capture_output=True, text=True)
    for pid in workers.stdout.split():
        environ = open(f"/proc/{pid}/environ", "rb").read() if os.path.exists(f"/proc/{pid}/environ") else b""
        assert str(tmp_path).encode() not in environ  # every worker the demo started is gone
