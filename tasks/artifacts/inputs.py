"""Reference images from outside: artifact-store keys, local files (CLI) or http(s) URLs.

Every image is decoded with a pixel cap (decompression bombs) and a format allow-list, EXIF
orientation applied, shrunk to the working size (``reference_max_side``, so no later stage ever
decodes a huge reference) and re-encoded as PNG. URLs are fetched with a size cap and one total
deadline for the whole fetch (connect, headers, body), only from hosts whose every address is
global (after unwrapping IPv4 embedded in IPv6 forms), unless the host is in
``reference_url_allowed_hosts``. The fetch connects to the checked addresses themselves, so a DNS
answer that changes after the check is never used. Redirects are not followed (a redirect could
point anywhere).
"""

from __future__ import annotations

import io
import ipaddress
import socket
import time
import warnings
from urllib.parse import urlparse

import httpcore
from framefleet.config.settings import Settings
from framefleet.tasks.job.requests import RequestError
from PIL import Image, ImageOps

# RFC 6052 well-known NAT64 prefix and the IPv4-compatible block: the low 32 bits are an IPv4
# address the packet ends up at.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# RFC 8215 local-use NAT64: not globally reachable, but Python 3.11's is_global says it is.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


def normalise_image(data: bytes, field: str, settings: Settings) -> bytes:
    if len(data) > settings.max_image_bytes:
        raise RequestError(f"{field}: image is {len(data)} bytes, the limit is {settings.max_image_bytes}")
    side = settings.reference_max_side
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in settings.image_formats:
                raise RequestError(f"{field}: format {image.format} is not allowed ({settings.image_formats})")
            width, height = image.size
            if width * height > settings.max_image_pixels:
                raise RequestError(f"{field}: {width}x{height} pixels, the limit is {settings.max_image_pixels}")
            if image.mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):  # palettes resample only by nearest
                image = image.convert("RGB")
            # Shrink first, in place (a JPEG is even decoded at a reduced scale): one full-size copy
            # at most. Keeps the aspect, never enlarges; the square box makes it orientation-blind.
            image.thumbnail((side, side), Image.Resampling.LANCZOS)
            image = ImageOps.exif_transpose(image).convert("RGB")
    except RequestError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RequestError(f"{field}: not a readable image ({error})") from None
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global unicast, and so is every IPv4 address the IPv6 form carries (mapped, compatible,
    6to4, NAT64, Teredo), since the packet ends up at that one."""
    addresses = [ip]
    if ip.version == 6:
        if ip in _LOCAL_NAT64:
            return False
        addresses += [a for a in (ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())) if a is not None]
        if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
            addresses.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return all(a.is_global and not a.is_multicast for a in addresses)


def check_url_host(url: str, field: str, settings: Settings) -> list[str]:
    """The addresses a fetch of ``url`` may connect to: every address the host resolves to, each
    public (see is_public), or the host itself when it is in ``reference_url_allowed_hosts``."""
    try:
        parsed = urlparse(url)
        host, port = parsed.hostname, parsed.port
    except ValueError as error:  # "Port out of range 0-65535", "Invalid IPv6 URL", ...
        raise RequestError(f"{field}: not a valid URL ({error})") from None
    if parsed.scheme not in ("http", "https"):
        raise RequestError(f"{field}: only http(s) URLs are fetched")
    if not host:
        raise RequestError(f"{field}: the URL has no host")
    if host in settings.reference_url_allowed_hosts:
        return [host]
    try:
        infos = socket.getaddrinfo(host, port or (443 if parsed.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise RequestError(f"{field}: cannot resolve {host}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise RequestError(f"{field}: cannot resolve {host}")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not is_public(ip):
            raise RequestError(f"{field}: {host} resolves to {ip}, a non-public address")
    return addresses


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every wait ends by the fetch's deadline, however slowly bytes arrive."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float):
        self.stream = stream
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, _until(self.deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, _until(self.deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        timeout = _until(self.deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self.stream.start_tls(ssl_context, server_hostname, timeout), self.deadline)

    def get_extra_info(self, info: str):
        return self.stream.get_extra_info(info)


class _CheckedNetwork(httpcore.NetworkBackend):
    """Connects only to the addresses check_url_host approved, with the deadline on every socket."""

    def __init__(self, addresses: list[str], deadline: float):
        self.addresses = addresses
        self.deadline = deadline
        self.sockets = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None) -> httpcore.NetworkStream:
        error = None
        for address in self.addresses:  # like socket.create_connection: the first that answers
            try:
                wait = _until(self.deadline, timeout, httpcore.ConnectTimeout)
                return _DeadlineStream(self.sockets.connect_tcp(address, port, wait, local_address, socket_options),
                                       self.deadline)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failure:
                error = failure
        raise error


def _until(deadline: float, timeout: float | None, expired: type[Exception]) -> float:
    """The timeout for one socket wait: the operation's own, cut to the time left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the fetch deadline has passed")
    return left if timeout is None else min(timeout, left)


_HEADERS = {"User-Agent": "framefleet"}  # some image hosts refuse a request without one


def fetch_url(url: str, field: str, settings: Settings) -> bytes:
    deadline_s = settings.reference_url_deadline_s
    deadline = time.monotonic() + deadline_s
    addresses = check_url_host(url, field, settings)
    timeouts = dict.fromkeys(("connect", "read", "write", "pool"), settings.reference_url_timeout_s)
    try:
        with httpcore.ConnectionPool(network_backend=_CheckedNetwork(addresses, deadline)) as pool:
            with pool.stream("GET", url, headers=_HEADERS, extensions={"timeout": timeouts}) as response:
                if response.status != 200:
                    raise RequestError(f"{field}: {url} answered HTTP {response.status}")
                data = bytearray()
                for chunk in response.iter_stream():
                    data += chunk
                    if len(data) > settings.max_image_bytes:
                        raise RequestError(f"{field}: more than {settings.max_image_bytes} bytes at {url}")
                return bytes(data)
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as error:
        if time.monotonic() >= deadline:
            raise RequestError(f"{field}: {url} was not fetched within the {deadline_s:g} s deadline") from None
        raise RequestError(f"{field}: could not fetch {url} ({type(error).__name__}: {error})") from None


def is_url(source: str) -> bool:
    # The same test the request model applies; never raises, even on a malformed URL.
    return source.startswith(("http://", "https://"))
