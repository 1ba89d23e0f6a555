"""`framefleet demo` as a user runs it: no broker configured, so it starts everything itself."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest


@pytest.mark.integration
def test_demo_runs_a_storyboard_end_to_end_and_stops_what_it_started(tmp_path, no_process_outlives_the_test):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAMEFLEET_", "OPENAI_", "REPLICATE_"))}
    result = subprocess.run([sys.executable, "-m", "framefleet.workers.cli", "demo", "--clips", "1", "--out", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    port = int(re.search(r"Started Redis on redis://127.0.0.1:(\d+)/0", result.stdout).group(1))
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # the demo's Redis is stopped
    (manifest_path,) = tmp_path.glob("jobs/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["status"] == "succeeded" and len(manifest["frames"]) == 2
    assert (tmp_path / manifest["contact_sheet"]["png"]).is_file()
    assert "Contact sheet (png)" in result.stdout and str(manifest_path) in result.stdout
    traces = list(tmp_path.glob("traces/*/clip_001_start/*"))
    assert any(p.name == "01_agent1_iteration_1.txt" for p in traces)  # the demo keeps its traces
