import io

import pytest

from PIL import Image

from framefleet.tasks.contact_sheet import SELECTED, candidate_thumbnail, render_contact_html, render_contact_sheet
from framefleet.tasks.records import FrameRecord, JobTimings, Manifest, Scores, Selection, VariationRecord

COLOURS = {"in.png": (0, 0, 255), "v1.png": (255, 0, 0), "v2.png": (0, 255, 0)}


def manifest() -> Manifest:
    frame = FrameRecord(
        name="clip_001_start", clip=1, status="succeeded", inputs=["in.png"], original_prompt="p",
        variations=[
            VariationRecord(index=1, key="v1.png", scores=Scores(overall=40, pickscore=50, clip_score=30,
                                                                 aesthetic=20, consistency=[0.5]), rank=2),
            VariationRecord(index=2, key="v2.png", scores=Scores(overall=60, pickscore=70), rank=1),
            VariationRecord(index=3, error="NSFW content detected"),
        ],
        selected=Selection(index=2, key="v2.png", frame_key="f.png", overall=60),
        warnings=["quality 60.0 is below the threshold 70.0"],
    )
    return Manifest(job_id="j", kind="storyboard", status="succeeded", scorer="models", providers={},
                    config={}, timings=JobTimings(submitted=0), frames=[frame])


def load(key):
    return Image.new("RGB", (160, 90), COLOURS[key])


def test_png_outlines_the_selected_candidate_and_shows_inputs():
    sheet = Image.open(io.BytesIO(render_contact_sheet(manifest(), "16:9", load))).convert("RGB")
    pixels = sheet.load()
    colours = {pixels[x, y] for x in range(sheet.width) for y in range(0, sheet.height, 3)}
    assert SELECTED in colours and (0, 0, 255) in colours and (255, 0, 0) in colours
    assert sheet.width > 250 + 3 * 224


def test_html_links_every_candidate_and_marks_failures():
    page = render_contact_html(manifest(), lambda key: key)
    assert "class='selected'><a href='v2.png'>" in page
    assert "failed: NSFW content detected" in page and "below the threshold" in page
    assert "cons" in page and "#1" in page


def test_each_image_is_loaded_once_and_a_missing_input_is_an_empty_box():
    board = manifest()
    second = board.frames[0].model_copy(update={"name": "clip_001_end", "inputs": ["v2.png", "gone.png"]})
    board.frames.append(second)
    loads = []

    def counting_load(key):
        loads.append(key)
        if key == "gone.png":
            raise KeyError(key)
        return load(key)

    sheet = Image.open(io.BytesIO(render_contact_sheet(board, "16:9", counting_load))).convert("RGB")
    assert sorted(loads) == ["gone.png", "in.png", "v1.png", "v2.png"]  # v2 is a candidate and an input
    assert sheet.height > 2 * 126


def test_an_input_that_is_a_selected_frame_is_read_as_its_candidate():
    board = manifest()
    board.frames.append(board.frames[0].model_copy(update={"name": "clip_001_end", "inputs": ["f.png"]}))
    loads = []

    def counting_load(key):
        loads.append(key)
        return load(key)  # f.png is not a key the store would find here: it must not be read

    sheet = Image.open(io.BytesIO(render_contact_sheet(board, "16:9", counting_load))).convert("RGB")
    assert sorted(loads) == ["in.png", "v1.png", "v2.png"]
    second_row_input = sheet.crop((250, 56 + 126 + 64 + 12, 250 + 134, 56 + 126 + 64 + 12 + 76))
    assert (0, 255, 0) in {colour for _, colour in second_row_input.getcolors(2**16)}  # v2's green
    # The whole sheet is the one drawn with the candidate itself as the input.
    direct = manifest()
    direct.frames.append(direct.frames[0].model_copy(update={"name": "clip_001_end", "inputs": ["v2.png"]}))
    assert sheet.tobytes() == Image.open(io.BytesIO(render_contact_sheet(direct, "16:9", load))).convert("RGB").tobytes()


def test_a_candidate_missing_from_the_store_fails_the_sheet():
    def without_v1(key):
        if key == "v1.png":
            raise KeyError(key)
        return load(key)

    with pytest.raises(KeyError):
        render_contact_sheet(manifest(), "16:9", without_v1)


def test_stored_candidate_thumbnails_are_read_instead_of_the_full_images():
    board = manifest()
    stored = {key: Image.open(io.BytesIO(candidate_thumbnail(load(key), "16:9"))) for key in ("v1.png", "v2.png")}
    loads, thumbnail_loads = [], []

    def counting_load(key):
        loads.append(key)
        return load(key)

    def load_thumbnail(key):
        thumbnail_loads.append(key)
        return stored[key]

    with_thumbnails = render_contact_sheet(board, "16:9", counting_load, load_thumbnail)
    assert loads == ["in.png"] and sorted(thumbnail_loads) == ["v1.png", "v2.png"]  # the input is no candidate
    # The same sheet as one drawn from the full images: a thumbnail is the tile the sheet draws.
    assert Image.open(io.BytesIO(with_thumbnails)).convert("RGB").tobytes() == \
        Image.open(io.BytesIO(render_contact_sheet(board, "16:9", load))).convert("RGB").tobytes()


def test_a_missing_thumbnail_or_one_of_another_size_falls_back_to_the_full_image():
    loads = []

    def counting_load(key):
        loads.append(key)
        return load(key)

    def load_thumbnail(key):
        if key == "v1.png":
            raise KeyError(key)
        return Image.open(io.BytesIO(candidate_thumbnail(load(key), "4:3")))  # drawn for another aspect ratio

    render_contact_sheet(manifest(), "16:9", counting_load, load_thumbnail)
    assert sorted(loads) == ["in.png", "v1.png", "v2.png"]
