from framefleet.tasks.job.plan import build_frame_plan, resolve_inputs, weave_scene_prompt
from framefleet.tasks.job.requests import parse_request


def storyboard(clips=3, reference="ref/r.png"):
    body = {"clips": [{"start_prompt": f"s{n}", "end_prompt": f"e{n}"} for n in range(1, clips + 1)]}
    if reference:
        body["reference_image"] = reference
    return build_frame_plan(parse_request("storyboard", body))


def selected_all(plan):
    return {f.name: f"sel/{f.name}.png" for f in plan.frames}


def test_storyboard_frame_names_and_order():
    assert [f.name for f in storyboard(2).frames] == ["clip_001_start", "clip_001_end", "clip_002_start",
                                                      "clip_002_end"]


def test_storyboard_chaining_table_with_reference():
    plan = storyboard(3)
    sel = selected_all(plan)
    inputs = {f.name: resolve_inputs(plan, f, sel) for f in plan.frames}
    assert inputs["clip_001_start"] == ["ref/r.png"]
    assert inputs["clip_001_end"] == ["ref/r.png", "sel/clip_001_start.png"]
    assert inputs["clip_002_start"] == ["ref/r.png", "sel/clip_001_end.png"]
    assert inputs["clip_002_end"] == ["ref/r.png", "sel/clip_002_start.png"]
    assert inputs["clip_003_start"] == ["ref/r.png", "sel/clip_002_end.png"]


def test_storyboard_without_reference_simply_drops_it():
    plan = storyboard(2, reference=None)
    sel = selected_all(plan)
    inputs = {f.name: resolve_inputs(plan, f, sel) for f in plan.frames}
    assert inputs == {"clip_001_start": [], "clip_001_end": ["sel/clip_001_start.png"],
                      "clip_002_start": ["sel/clip_001_end.png"], "clip_002_end": ["sel/clip_002_start.png"]}


def test_failed_frame_chains_from_last_good_frame():
    plan = storyboard(3)
    sel = selected_all(plan)
    del sel["clip_002_start"], sel["clip_002_end"]  # clip 2 failed
    assert resolve_inputs(plan, plan.frame("clip_003_start"), sel) == ["ref/r.png", "sel/clip_001_end.png"]


def test_nothing_selected_yet_falls_back_to_reference_only_once():
    plan = storyboard(2)
    assert resolve_inputs(plan, plan.frame("clip_002_start"), {}) == ["ref/r.png"]


def references(scenes=3, initial="init.png", **extra):
    body = {"scene_prompts": [f"scene {n}" for n in range(1, scenes + 1)], **extra}
    if initial:
        body["initial_reference_image"] = initial
    return parse_request("references", body)


def test_reference_chaining_table():
    plan = build_frame_plan(references(3))
    sel = selected_all(plan)
    inputs = {f.name: resolve_inputs(plan, f, sel) for f in plan.frames}
    assert inputs == {"scene_001": ["init.png"], "scene_002": ["sel/scene_001.png"],
                      "scene_003": ["sel/scene_002.png"]}
    no_initial = build_frame_plan(references(2, initial=None))
    assert resolve_inputs(no_initial, no_initial.frames[0], {}) == []


def test_failed_scene_falls_back_to_previous_good_scene_then_initial_reference():
    plan = build_frame_plan(references(3))
    assert resolve_inputs(plan, plan.frame("scene_003"), {"scene_001": "s1.png"}) == ["s1.png"]
    assert resolve_inputs(plan, plan.frame("scene_002"), {}) == ["init.png"]


def test_markers_notes_guidelines_and_transitions_are_woven_into_scene_prompts():
    request = references(3, consistency_markers={"character": "keeper in yellow", "palette": "teal"},
                         continuity_notes=["n1", "n2"], consistency_guidelines=["same coat", "no text"],
                         transition_notes=["t1-2", "t2-3"])
    first, second, third = (weave_scene_prompt(request, i) for i in range(3))
    assert first.startswith("scene 1") and "character: keeper in yellow; palette: teal" in first
    assert "Continuity: n1" in first and "Transition" not in first
    assert "Continuity: n2" in second and "Transition from the previous scene: t1-2" in second
    assert "Continuity" not in third and "t2-3" in third
    assert all("Guidelines: same coat; no text" in p for p in (first, second, third))
    assert build_frame_plan(request).frames[1].prompt == second


def test_woven_parts_name_what_each_scene_prompt_carries():
    from framefleet.tasks.job.plan import woven_parts

    request = references(3, consistency_markers={"character": "keeper"}, continuity_notes=["n1", "  "],
                         consistency_guidelines=["same coat"], transition_notes=["t1-2"])
    assert woven_parts(request, 0) == ["consistency_markers", "continuity_notes.0", "consistency_guidelines"]
    assert woven_parts(request, 1) == ["consistency_markers", "consistency_guidelines", "transition_notes.0"]
    assert woven_parts(request, 2) == ["consistency_markers", "consistency_guidelines"]


def test_blank_guidelines_weave_nothing():
    request = references(2, consistency_guidelines=["  ", ""])
    assert weave_scene_prompt(request, 0) == "scene 1"
