"""`framefleet eval` as a user runs it: no broker configured, so it starts an embedded fleet; offline
providers; the tiny scoring models both in the fleet and for the re-scoring."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from framefleet.workers.evaluation.report import HEURISTIC_CAVEAT, PLOTS, caveats, render_html
from PIL import Image

from tests.tiny_models import build_tiny_models, sources_env

pytestmark = pytest.mark.integration

STORYBOARDS = [
    {"name": "harbour", "clips": [{"start_prompt": "A red boat leaves the harbour at dawn",
                                   "end_prompt": "The red boat reaches the open sea"}]},
    {"name": "forest", "aspect_ratio": "1:1", "clips": [
        {"start_prompt": "A fox walks into a snowy forest", "end_prompt": "The fox sleeps under a pine"},
        {"start_prompt": "Morning light wakes the fox", "end_prompt": "The fox runs across a frozen lake"}]},
]
PROMPTS = ["a blue teapot on a wooden table", "an astronaut riding a horse", "a city skyline at night"]
FRAMES = 2 + 4 + 3  # per arm
CLIPS = 1 + 2


def intervals(node):
    """Every {mean, ci95} statistic anywhere in the summary."""
    if isinstance(node, dict):
        if "ci95" in node:
            yield node
        for value in node.values():
            yield from intervals(value)


def test_eval_compares_arms_with_one_rescorer_and_writes_the_report(tmp_path):
    sources = build_tiny_models(tmp_path / "models")
    storyboards = tmp_path / "boards.jsonl"
    storyboards.write_text("".join(json.dumps(board) + "\n" for board in STORYBOARDS))
    prompts = tmp_path / "parti.tsv"
    prompts.write_text("Prompt\tCategory\n" + "".join(f"{p}\tTest\n" for p in PROMPTS))
    out = tmp_path / "eval"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAMEFLEET_", "OPENAI_", "REPLICATE_"))}
    env.update(sources_env(sources), FRAMEFLEET_LLM_PROVIDER="offline", FRAMEFLEET_IMAGE_PROVIDER="offline",
               FRAMEFLEET_JUDGE_MARGIN="100")  # the judge arm judges every frame
    result = subprocess.run([sys.executable, "-m", "framefleet.workers.cli", "eval", "--prompts", str(storyboards),
                             "--prompts", str(prompts), "--arms", "enhanced,baseline,judge", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    port = int(re.search(r"Started Redis on redis://127.0.0.1:(\d+)/0", result.stdout).group(1))
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # the embedded fleet is stopped

    summary = json.loads((out / "summary.json").read_text())
    assert summary["arms"] == ["baseline", "enhanced", "judge"]
    assert [s["items"] for s in summary["prompt_sets"]] == [2, 3]
    assert summary["scorer"]["name"] == "models" and summary["selection_scorers"] == ["models"]
    assert summary["providers"]["enhanced"] == ["images offline", "llm offline"]
    assert summary["providers"]["judge"] == ["images offline", "judge offline", "llm offline"]
    assert summary["offline"] == ["images", "judge", "llm"] and summary["caveats"] == caveats(summary)
    for arm, images in (("baseline", 1), ("enhanced", 4), ("judge", 4)):
        numbers = summary["by_arm"][arm]
        assert (numbers["jobs"], numbers["jobs_not_finished"], numbers["frames_with_image"]) == (5, 0, FRAMES)
        assert all(numbers["metrics"][m]["n"] == FRAMES for m in ("pickscore", "clip_score", "aesthetic", "overall"))
        assert numbers["consistency"]["previous"]["n"] == CLIPS  # each clip's end with its start
        assert numbers["consistency"]["reference"]["n"] == FRAMES - 3 - 2  # not the first frames, not single prompts
        assert numbers["cost"]["images_per_frame"] == images
        assert numbers["below_threshold"]["of"] == FRAMES
    assert summary["by_arm"]["baseline"]["latency_s"]["per_frame"]["enhancement"]["n"] == 0  # no LLM rounds
    assert summary["by_arm"]["enhanced"]["latency_s"]["per_frame"]["enhancement"]["n"] == FRAMES
    win = summary["by_arm"]["enhanced"]["win_rate_vs_baseline"]
    assert win["n"] == win["wins"] + win["ties"] + win["losses"] == FRAMES
    stats = list(intervals(summary))
    # metrics, consistency, latency per frame and per job, the judge's agreement; win rates
    assert len(stats) == 3 * (4 + 2 + 3 + 4 + 1) + 2
    for stat in stats:
        if stat["n"]:
            low, high = stat["ci95"]
            assert low <= stat["mean"] <= high

    # One scorer, one batch per frame holding that frame under both arms, against its original prompt.
    rows = json.loads((out / "frames.json").read_text())
    assert len(rows) == 3 * FRAMES
    batches: dict[int, set] = {}
    for row in rows:
        batches.setdefault(row["rescore_batch"], set()).add((row["item"], row["frame"], row["arm"]))
    assert summary["scorer"]["batches"] == len(batches) == FRAMES
    assert all(len({(i, f) for i, f, _ in members}) == 1 and len(members) == 3 for members in batches.values())
    for row in rows:
        if row["arm"] == "baseline" and not row["inputs"]:  # scored before with the same prompt and model
            assert row["scores"]["overall"] == pytest.approx(row["selection_overall"], abs=0.05)

    # The judge arm: every frame a close call (margin 100), judged in both orders by the offline judge,
    # which has a verdict only where the frame has input images; the other arms are never judged.
    judge = summary["by_arm"]["judge"]["judge"]
    with_inputs = [r for r in rows if r["arm"] == "judge" and r["inputs"]]
    assert (judge["frames_judged"], judge["of"], judge["failed"]) == (FRAMES, FRAMES, 0)
    assert judge["no_verdict"] == FRAMES - len(with_inputs) and judge["agreement_with_scores"]["n"] == len(with_inputs)
    assert summary["by_arm"]["judge"]["cost"]["judge_calls_per_frame"] == 2
    assert all(r["judge"] is None for r in rows if r["arm"] != "judge")

    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert {f"plots/{name}" for name in PLOTS} <= set(sources)
    for source in sources:
        with Image.open(out / source) as image:
            image.verify()
    assert "models scorer" in page and "llm offline" in page and HEURISTIC_CAVEAT not in page
    assert page.index("Offline stand-ins ran the images, judge and llm stage") < page.index("<h2>Summary")
    heuristic = render_html({**summary, "scorer": {**summary["scorer"], "name": "heuristic"}}, [])
    assert heuristic.index(HEURISTIC_CAVEAT) < heuristic.index("<h2>Summary")


def test_eval_refuses_a_prompt_file_without_a_prompt_column_before_starting_anything(tmp_path):
    prompts = tmp_path / "bad.tsv"
    prompts.write_text("Text\tCategory\na cat\tAnimals\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    result = subprocess.run([sys.executable, "-m", "framefleet.workers.cli", "eval", "--prompts", str(prompts),
                             "--out", str(tmp_path / "eval")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "has no Prompt column" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "eval").exists()
