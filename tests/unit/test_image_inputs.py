"""Reference images from outside: decoding caps, formats, EXIF, and the SSRF guard."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from config.settings import Settings
from tasks.requests import RequestError
from workers.inputs import check_url_host, normalise_image

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


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x.png", "http://localhost:8080/x.png", "http://10.1.2.3/x.png", "http://192.168.0.1/x.png",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.png", "http://0.0.0.0/x.png", "https://172.16.0.9/",
])
def test_non_public_addresses_are_refused(url):
    with pytest.raises(RequestError, match="reference_image: .*non-public address"):
        check_url_host(url, "reference_image", SETTINGS)


def test_allowed_hosts_and_schemes():
    check_url_host("http://127.0.0.1/x.png", "f", Settings(reference_url_allowed_hosts=["127.0.0.1"]))
    with pytest.raises(RequestError, match="only http"):
        check_url_host("ftp://example.com/x.png", "f", SETTINGS)
