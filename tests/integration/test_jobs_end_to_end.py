"""Whole jobs on a real Redis with one real worker process per queue, local-folder store."""

from __future__ import annotations

import pytest
from framefleet.tasks.artifacts.images import candidate_thumbnail
from framefleet.tasks.artifacts.keys import ORIGINAL_PROMPT_TRACE, SUMMARY_TRACE, thumbnail_key
from framefleet.tasks.artifacts.manifest import decode_image
from framefleet.tasks.artifacts.store import open_store
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.progress import STAGE_MESSAGES

from tests.helpers import png_bytes, put_reference, references_request, run_job, storyboard_request, unique_id

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory, start_fleet):
    root = tmp_path_factory.mktemp("artifacts")
    start_fleet({"FRAMEFLEET_STORE_URL": f"file://{root}"})
    return open_store(f"file://{root}")


def expected_storyboard_inputs(job_id: str, reference: str | None, clips: int) -> dict[str, list[str]]:
    """The chaining table of DESIGN.md, written out frame by frame."""
    ref = [reference] if reference else []
    frame = lambda name: f"jobs/{job_id}/frames/{name}.png"  # noqa: E731
    expected = {}
    for n in range(1, clips + 1):
        start, end = f"clip_{n:03d}_start", f"clip_{n:03d}_end"
        expected[start] = ref + ([frame(f"clip_{n - 1:03d}_end")] if n > 1 else [])
        expected[end] = ref + [frame(start)]
    return expected


def assert_frames_complete(manifest: dict, variations: int = 4) -> None:
    for frame in manifest["frames"]:
        assert frame["status"] == "succeeded", frame["name"]
        assert len(frame["variations"]) == variations
        assert all(v["key"] and v["error"] is None for v in frame["variations"])
        ranked = {v["rank"]: v for v in frame["variations"]}
        assert sorted(ranked) == list(range(1, variations + 1))
        assert frame["selected"]["index"] == ranked[1]["index"]
        assert frame["selected"]["overall"] == max(v["scores"]["overall"] for v in frame["variations"])
        assert frame["enhanced_prompt"] and frame["enhanced_prompt"] != frame["original_prompt"]
        assert frame["enhancement"]["iterations"] >= 1 and not frame["enhancement"]["fallback"]


def test_storyboard_with_reference_chains_every_frame(celery_app, store):
    job_id = unique_id("sb")
    reference = put_reference(store, job_id)
    status, manifest = run_job(celery_app, "storyboard", storyboard_request(job_id, 3, reference_image=reference),
                               store)

    assert status.state == "done" and status.outcome == "succeeded" and status.percent == 100.0
    assert status.frames_done == status.frames_total == 6
    assert manifest["status"] == "succeeded" and manifest["scorer"] == "heuristic"
    assert [f["name"] for f in manifest["frames"]] == [
        "clip_001_start", "clip_001_end", "clip_002_start", "clip_002_end", "clip_003_start", "clip_003_end"]
    # The reference is validated and stored as the job's own input (a PNG, EXIF applied).
    stored_reference = f"jobs/{job_id}/inputs/reference.png"
    expected = expected_storyboard_inputs(job_id, stored_reference, 3)
    assert {f["name"]: f["inputs"] for f in manifest["frames"]} == expected
    assert_frames_complete(manifest)
    for frame in manifest["frames"]:
        assert store.exists(f"jobs/{job_id}/frames/{frame['name']}.png")
        assert store.get(frame["selected"]["frame_key"]) == store.get(frame["selected"]["key"])
        for variation in frame["variations"]:  # scoring stored and named each candidate's sheet tile
            assert variation["thumbnail_key"] == thumbnail_key(variation["key"])
            expected_thumbnail = candidate_thumbnail(decode_image(store.get(variation["key"])), "16:9")
            assert decode_image(store.get(variation["thumbnail_key"])).tobytes() == \
                decode_image(expected_thumbnail).tobytes()
    assert store.list(f"traces/{job_id}") == []  # deleted at finalize by default
    sheet = manifest["contact_sheet"]
    assert sheet == {"png": f"jobs/{job_id}/contact_sheet.png", "html": f"jobs/{job_id}/contact_sheet.html"}
    assert store.get(sheet["png"]).startswith(b"\x89PNG")
    page = store.get(sheet["html"]).decode()
    assert page.count("<tr>") == 6 and "inputs/reference.png" in page
    assert "variations/clip_003_end/v1.png" in page
    history = Job(job_id).progress.history()
    messages = STAGE_MESSAGES["storyboard"]
    order = [next(i for i, line in enumerate(history) if messages[stage] in line)
             for stage in ("enhance", "generate", "score")]
    assert order == sorted(order)


def test_a_job_leaves_no_result_subscriptions_behind(celery_app, store):
    """Sending a frame's chord subscribes to nothing: the fleet never waits on its steps' results,
    and Celery would keep one Redis subscription per variation for as long as the worker runs."""
    client = Job("any").r
    before = set(client.pubsub_channels("celery-task-meta-*"))
    status, _ = run_job(celery_app, "storyboard", storyboard_request(unique_id("sb"), 2), store)

    assert status.outcome == "succeeded"
    assert set(client.pubsub_channels("celery-task-meta-*")) - before == set()


def test_storyboard_without_reference_has_no_reference_input(celery_app, store):
    job_id = unique_id("sb-noref")
    _, manifest = run_job(celery_app, "storyboard", storyboard_request(job_id, 2), store)
    assert {f["name"]: f["inputs"] for f in manifest["frames"]} == expected_storyboard_inputs(job_id, None, 2)
    assert_frames_complete(manifest)


def test_reference_job_chains_scenes_and_keeps_traces(celery_app, store):
    job_id = unique_id("refs")
    initial = f"uploads/{job_id}/initial.png"
    store.put(initial, png_bytes((20, 120, 200)))
    request = references_request(job_id, 3, initial_reference_image=initial, overrides={"keep_traces": True})
    status, manifest = run_job(celery_app, "references", request, store)

    assert status.outcome == "succeeded" and status.percent == 100.0
    frames = {f["name"]: f for f in manifest["frames"]}
    assert list(frames) == ["scene_001", "scene_002", "scene_003"]
    assert frames["scene_001"]["inputs"] == [f"jobs/{job_id}/inputs/reference.png"]
    assert frames["scene_002"]["inputs"] == [f"jobs/{job_id}/frames/scene_001.png"]
    assert frames["scene_003"]["inputs"] == [f"jobs/{job_id}/frames/scene_002.png"]
    assert "grey-bearded keeper in a yellow coat" in frames["scene_002"]["original_prompt"]
    assert "cut on the lantern swing" in frames["scene_002"]["original_prompt"]
    assert_frames_complete(manifest)
    for name in frames:
        traces = store.list(f"traces/{job_id}/{name}")
        prefix = f"traces/{job_id}/{name}/"
        assert {prefix + ORIGINAL_PROMPT_TRACE, prefix + SUMMARY_TRACE, prefix + "01_agent1_iteration_1.txt",
                prefix + "02_agent2_iteration_1.txt", prefix + "final_enhanced_prompt.txt",
                prefix + "generation_trace.json"} <= set(traces)
    history = Job(job_id).progress.history()
    for stage in ("enhance", "generate", "score"):
        assert any(STAGE_MESSAGES["references"][stage] in line for line in history)


def test_per_job_override_of_variation_count(celery_app, store):
    job_id = unique_id("sb-two")
    _, manifest = run_job(celery_app, "storyboard", storyboard_request(job_id, 1, overrides={"num_variations": 2}),
                          store)
    assert manifest["config"]["num_variations"] == 2
    assert_frames_complete(manifest, variations=2)


def test_bad_request_is_refused_naming_the_field_and_writes_nothing(celery_app, store):
    from framefleet.tasks.job.errors import JobNotFound, RequestError
    from framefleet.workers.client import submit_job

    job_id = unique_id("bad")
    request = storyboard_request(job_id, 1)
    request["clips"][0]["end_prompt"] = ""
    with pytest.raises(RequestError, match=r"clips\.0\.end_prompt"):
        submit_job(celery_app, "storyboard", request)
    with pytest.raises(JobNotFound):
        Job(job_id).progress.read()
    missing = storyboard_request(job_id, 1, reference_image="uploads/nowhere.png")
    with pytest.raises(RequestError, match="reference_image"):
        submit_job(celery_app, "storyboard", missing)
    assert store.list(f"jobs/{job_id}") == [] and store.list(f"traces/{job_id}") == []


def test_duplicate_job_id_is_refused(celery_app, store):
    from framefleet.tasks.job.errors import JobExists
    from framefleet.workers.client import submit_job

    job_id = unique_id("dup")
    run_job(celery_app, "storyboard", storyboard_request(job_id, 1), store)
    with pytest.raises(JobExists, match="job_id"):
        submit_job(celery_app, "storyboard", storyboard_request(job_id, 1))


def test_status_task_answers_a_main_app_that_only_knows_task_names(celery_app, store):
    job_id = unique_id("name-only")
    run_job(celery_app, "storyboard", storyboard_request(job_id, 1), store)
    status = celery_app.send_task("framefleet.jobs.status", args=[job_id]).get(timeout=30)
    assert status["state"] == "done" and status["percent"] == 100.0 and status["outcome"] == "succeeded"


def test_cli_submit_wait_and_status_against_the_configured_broker(celery_app, store, tmp_path, monkeypatch, capsys):
    import json

    from framefleet.config.settings import get_settings
    from framefleet.tasks.artifacts.store import fleet_store
    from framefleet.workers.cli import main

    monkeypatch.setenv("FRAMEFLEET_STORE_URL", store.url)
    get_settings.cache_clear()
    fleet_store.cache_clear()
    try:
        request = tmp_path / "request.json"
        job_id = unique_id("cli")
        request.write_text(json.dumps(storyboard_request(job_id, 1)))
        reference = tmp_path / "ref.png"
        reference.write_bytes(png_bytes((90, 90, 200)))
        assert main(["submit", "storyboard", str(request), "--reference", str(reference), "--wait"]) == 0
        out = capsys.readouterr().out
        assert f"Job {job_id}: succeeded" in out and "contact_sheet.png" in out
        assert main(["status", job_id]) == 0 and "done 100%" in capsys.readouterr().out
        assert main(["status", job_id, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["outcome"] == "succeeded"
        not_an_image = tmp_path / "notes.png"
        not_an_image.write_text("not an image")
        assert main(["submit", "storyboard", str(request), "--reference", str(not_an_image)]) == 2
        assert "reference: not a readable image" in capsys.readouterr().err
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"clips": [{"start_prompt": "a"}]}))
        assert main(["submit", "storyboard", str(bad)]) == 2
        assert "clips.0.end_prompt" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
        fleet_store.cache_clear()
