"""Reference images from outside: decoding caps, formats, EXIF, the working size."""

from __future__ import annotations

import io

import pytest
from framefleet.config.settings import Settings
from framefleet.tasks.artifacts.inputs import normalise_image
from framefleet.tasks.job.requests import RequestError
from PIL import Image

SETTINGS = Settings(max_image_pixels=1_000_000, max_image_bytes=2_000_000)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def test_png_jpeg_and_webp_are_normalised_to_png():
    for fmt in ("PNG", "JPEG", "WEBP"):
        data = normalise_image(encode(Image.new("RGB", (40, 20), "red"), fmt), "reference_image", SETTINGS)
        assert Image.open(io.BytesIO(data)).format == "PNG"


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    data = encode(Image.new("RGB", (40, 20), "blue"), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(normalise_image(data, "reference_image", SETTINGS))).size == (20, 40)


@pytest.mark.parametrize("data, message", [
    (encode(Image.new("RGB", (2000, 1000)), "PNG"), "2000x1000 pixels, the limit is 1000000"),  # a bomb for this cap
    (encode(Image.new("RGB", (10, 10)), "GIF"), "format GIF is not allowed"),
    (encode(Image.new("RGB", (10, 10)), "BMP"), "format BMP is not allowed"),
    (b"\x89PNG\r\n\x1a\n garbage", "not a readable image"),
    (b"x" * 2_000_001, "bytes, the limit is 2000000"),
])
def test_bad_images_are_refused_naming_the_field(data, message):
    with pytest.raises(RequestError, match=f"reference_image: .*{message}"):
        normalise_image(data, "reference_image", SETTINGS)


@pytest.mark.parametrize("size, max_side, expected", [
    ((6500, 6000), 2048, (2048, 1890)),  # the size from issue 9: a 113 KB PNG, under both caps
    ((600, 6500), 2048, (189, 2048)),
    ((1000, 400), 2048, (1000, 400)),  # never enlarged
])
def test_references_are_shrunk_to_the_working_size_keeping_the_aspect(size, max_side, expected):
    settings = Settings(reference_max_side=max_side)
    data = normalise_image(encode(Image.new("RGB", size, "green"), "PNG"), "reference_image", settings)
    assert Image.open(io.BytesIO(data)).size == expected


def test_a_large_rotated_jpeg_is_turned_then_shrunk():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (4000, 2000), "blue"), "JPEG", exif=exif.tobytes())
    shrunk = normalise_image(data, "reference_image", Settings(reference_max_side=1000))
    assert Image.open(io.BytesIO(shrunk)).size == (500, 1000)
