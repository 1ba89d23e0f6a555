import math

import pytest

from tests.bench.stats import (
    HANDOVER_PARTS,
    frame_times,
    handover_parts,
    images_stored,
    job_latency,
    round_start_spreads,
    scheduling_gaps,
    summarize,
    wave_bound,
)


def frame(enqueued, variations, score, keys=4):
    return {"timings": {"enqueued": enqueued, "variations": variations, "score": score},
            "variations": [{"index": i, "key": f"k{i}" if i <= keys else None, "queue_wait": 0.5}
                           for i in range(1, len(variations) + 1)]}


MANIFEST = {
    "timings": {"submitted": 100.0, "finished": 110.0},
    "frames": [frame(101.0, [(101.5, 102.5), (101.6, 103.0)], (103.1, 103.4)),
               frame(103.5, [(104.0, 105.0), (104.2, 105.5)], (105.6, 106.0), keys=1)],
}


@pytest.mark.parametrize("slots, unloaded, bound", [(4, 4.7, 21.2), (8, 4.7, 11.8), (16, 4.8, 7.2)])
def test_wave_bound_reproduces_issue_10s_table(slots, unloaded, bound):
    assert wave_bound(unloaded, jobs=8, slots=slots, images_per_frame=4) == pytest.approx(bound, abs=0.06)  # the table rounds to 0.1 s


def test_manifest_measures():
    assert job_latency(MANIFEST) == 10.0
    assert images_stored(MANIFEST) == 3
    assert frame_times(MANIFEST) == pytest.approx([103.4 - 101.5, 106.0 - 104.0])
    assert scheduling_gaps(MANIFEST) == pytest.approx([104.0 - 103.4])


def test_the_hand_over_parts_add_up_to_last_end_to_next_start():
    parts = handover_parts(MANIFEST)
    assert list(parts) == list(HANDOVER_PARTS)
    assert [p for [p] in parts.values()] == pytest.approx([103.1 - 103.0, 103.4 - 103.1, 103.5 - 103.4, 104.0 - 103.5])
    unsent = {**MANIFEST, "frames": [MANIFEST["frames"][0], {**MANIFEST["frames"][1], "timings": {
        **MANIFEST["frames"][1]["timings"], "enqueued": None}}]}
    assert handover_parts(unsent) == {name: [] for name in HANDOVER_PARTS}  # a frame never sent has no hand-over


def test_summary():
    summary = summarize(range(1, 101))
    assert (summary.count, summary.mean, summary.max) == (100, 50.5, 100)
    assert summary.p50 == pytest.approx(50.5) and summary.p95 == pytest.approx(95.05)
    assert math.isnan(summarize([]).mean)


def test_round_start_spread_is_per_round():
    def variation(source, start):
        return {"prompt_source": source, "timing": [start, start + 1.0]}

    manifest = {"frames": [
        {"variations": [variation("enhanced", 10.0), variation("enhanced", 10.04), variation("enhanced", 10.01),
                        {"prompt_source": "enhanced", "error": "cancelled"},  # never started: no timing
                        variation("original", 20.0)]},  # a round of one has no spread
        {"variations": [variation("enhanced", 30.0), variation("enhanced", 30.2)]},
    ]}
    assert round_start_spreads(manifest) == pytest.approx([0.04, 0.2])
