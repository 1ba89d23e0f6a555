import io
from types import SimpleNamespace

import pytest
from framefleet.tasks.artifacts.contact_sheet import SELECTED, render_contact_html, render_contact_sheet
from framefleet.tasks.artifacts.images import candidate_thumbnail
from framefleet.tasks.artifacts.keys import thumbnail_key, variation_key
from framefleet.tasks.artifacts.manifest import write_contact_sheet
from framefleet.tasks.job.records import FrameRecord, JobTimings, Manifest, Scores, Selection, VariationRecord
from framefleet.tasks.job.states import PromptSource
from PIL import Image

ENHANCED, ORIGINAL = PromptSource.ENHANCED, PromptSource.ORIGINAL
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



def with_thumbnails(board: Manifest, names: dict[str, str]) -> Manifest:
    for variation in board.frames[0].variations:
        variation.thumbnail_key = names.get(variation.key)
    return board


def test_the_thumbnails_scoring_recorded_are_read_instead_of_the_full_images():
    stored = {f"thumbs/{key}": Image.open(io.BytesIO(candidate_thumbnail(load(key), "16:9"))) for key in ("v1.png", "v2.png")}
    loads = []

    def counting_load(key):
        loads.append(key)
        return stored[key] if key in stored else load(key)

    board = with_thumbnails(manifest(), {"v1.png": "thumbs/v1.png", "v2.png": "thumbs/v2.png"})
    sheet = render_contact_sheet(board, "16:9", counting_load)
    assert sorted(loads) == ["in.png", "thumbs/v1.png", "thumbs/v2.png"]  # the input is no candidate
    # The same sheet as one drawn from the full images: a thumbnail is the tile the sheet draws.
    assert Image.open(io.BytesIO(sheet)).convert("RGB").tobytes() == \
        Image.open(io.BytesIO(render_contact_sheet(manifest(), "16:9", load))).convert("RGB").tobytes()


def test_a_thumbnail_missing_unreadable_or_of_another_size_falls_back_to_the_full_image():
    loads = []

    def counting_load(key):
        loads.append(key)
        if key == "thumbs/gone.png":
            raise KeyError(key)
        if key == "thumbs/broken.png":
            raise OSError("cannot identify image file")
        if key == "thumbs/4x3.png":
            return Image.open(io.BytesIO(candidate_thumbnail(load("v2.png"), "4:3")))  # another layout's
        return load(key)

    board = with_thumbnails(manifest(), {"v1.png": "thumbs/gone.png", "v2.png": "thumbs/4x3.png"})
    render_contact_sheet(board, "16:9", counting_load)
    assert sorted(loads) == ["in.png", "thumbs/4x3.png", "thumbs/gone.png", "v1.png", "v2.png"]
    loads.clear()
    render_contact_sheet(with_thumbnails(manifest(), {"v1.png": "thumbs/broken.png"}), "16:9", counting_load)
    assert sorted(loads) == ["in.png", "thumbs/broken.png", "v1.png", "v2.png"]


def test_finalize_reads_no_candidate_at_full_size_when_scoring_stored_its_thumbnail():
    images = {key: png(load(key)) for key in COLOURS}
    images.update({f"thumbs/{key}": candidate_thumbnail(load(key), "16:9") for key in ("v1.png", "v2.png")})
    gets, puts = [], {}

    class Store:
        def get(self, key):
            gets.append(key)
            return images[key]

        def put(self, key, data, content_type="application/octet-stream"):
            puts[key] = data

    board = with_thumbnails(manifest(), {"v1.png": "thumbs/v1.png", "v2.png": "thumbs/v2.png"})
    keys = write_contact_sheet(Store(), SimpleNamespace(job_id="j", aspect_ratio="16:9"), board)
    assert keys["png"] in puts and sorted(gets) == ["in.png", "thumbs/v1.png", "thumbs/v2.png"]


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_thumbnail_key_is_built_from_the_variation_key_parts():
    assert thumbnail_key(variation_key("variations", "clip_001_start", ENHANCED, 1)) == \
        "jobs/variations/thumbnails/clip_001_start/v1.png"  # a job may be called "variations"
    assert thumbnail_key(variation_key("j", "f", ORIGINAL, 1, 2)) == "jobs/j/thumbnails/f/r2/original_v1.png"
    for not_a_variation in ("jobs/j/frames/f.png", "jobs/j/variations", "v1.png"):
        with pytest.raises(ValueError):
            thumbnail_key(not_a_variation)
