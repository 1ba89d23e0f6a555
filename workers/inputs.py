"""Reference images from outside: artifact-store keys, local files (CLI) or http(s) URLs.

Every image is decoded with a pixel cap (decompression bombs), a format allow-list and EXIF
orientation applied, and re-encoded as PNG. URLs are fetched with a size cap and a timeout and
refused when the host resolves to a loopback, private, link-local (cloud metadata), reserved or
multicast address, unless the host is in ``reference_url_allowed_hosts``. Redirects are not
followed (a redirect could point anywhere).
"""

from __future__ import annotations

import io
import ipaddress
import socket
import warnings
from urllib.parse import urlparse

import httpx
from PIL import Image, ImageOps

from config.settings import Settings
from tasks.requests import RequestError


def normalise_image(data: bytes, field: str, settings: Settings) -> bytes:
    if len(data) > settings.max_image_bytes:
        raise RequestError(f"{field}: image is {len(data)} bytes, the limit is {settings.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in settings.image_formats:
                raise RequestError(f"{field}: format {image.format} is not allowed ({settings.image_formats})")
            width, height = image.size
            if width * height > settings.max_image_pixels:
                raise RequestError(f"{field}: {width}x{height} pixels, the limit is {settings.max_image_pixels}")
            image = ImageOps.exif_transpose(image).convert("RGB")
    except RequestError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RequestError(f"{field}: not a readable image ({error})") from None
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def check_url_host(url: str, field: str, settings: Settings) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise RequestError(f"{field}: only http(s) URLs are fetched")
    if parsed.hostname in settings.reference_url_allowed_hosts:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parsed.hostname, parsed.port or 443)}
    except socket.gaierror:
        raise RequestError(f"{field}: cannot resolve {parsed.hostname}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved or ip.is_multicast
                or ip.is_unspecified):
            raise RequestError(f"{field}: {parsed.hostname} resolves to {ip}, a non-public address")


def fetch_url(url: str, field: str, settings: Settings) -> bytes:
    check_url_host(url, field, settings)
    try:
        with httpx.stream("GET", url, timeout=settings.reference_url_timeout_s, follow_redirects=False) as response:
            if response.status_code != 200:
                raise RequestError(f"{field}: {url} answered HTTP {response.status_code}")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > settings.max_image_bytes:
                    raise RequestError(f"{field}: more than {settings.max_image_bytes} bytes at {url}")
            return bytes(data)
    except httpx.HTTPError as error:
        raise RequestError(f"{field}: could not fetch {url} ({error})") from None


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")
