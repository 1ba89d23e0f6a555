"""The SSRF guard: only global addresses, after unwrapping IPv4 carried in IPv6 forms, for every
address a name resolves to. IP literal hosts need no DNS; several answers come from a stub
getaddrinfo (the OS resolver, not a part of the project)."""

from __future__ import annotations

import socket

import pytest
from framefleet.config.settings import Settings
from framefleet.tasks.artifacts.inputs import check_url_host
from framefleet.tasks.job.requests import RequestError

SETTINGS = Settings()

REFUSED = [
    "127.0.0.1", "127.255.0.9", "0.0.0.0", "10.1.2.3", "172.16.0.9", "192.168.0.1",
    "100.64.0.1", "100.100.100.200", "100.127.255.254",  # CGNAT; Alibaba Cloud's metadata is 100.100.100.200
    "169.254.169.254", "169.254.0.1",  # link-local, cloud metadata
    "224.0.0.1", "239.255.255.250",  # multicast (Python calls these global)
    "240.0.0.1", "255.255.255.255", "192.0.0.170",
    "192.0.2.1", "198.51.100.7", "203.0.113.9", "198.18.0.1",  # documentation, benchmarking
    "::1", "::", "fe80::1", "fd00::1", "fc00::1", "ff02::1", "ff0e::1", "2001:db8::1", "100::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:100.100.100.200",  # IPv4-mapped
    "::127.0.0.1", "::169.254.169.254",  # IPv4-compatible (Python calls ::127.0.0.1 global)
    "2002:7f00:1::1", "2002:a00:1::1", "2002:a9fe:a9fe::1", "2002:6464:64c8::1",  # 6to4 of private/metadata
    "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::6464:64c8",  # NAT64 of private/metadata
    "64:ff9b:1::a00:1",  # local-use NAT64 prefix
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888",
           "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"]


def url_for(address: str) -> str:
    return f"http://[{address}]/x.png" if ":" in address else f"http://{address}/x.png"


@pytest.mark.parametrize("address", REFUSED)
def test_non_global_addresses_are_refused(address):
    with pytest.raises(RequestError, match="reference_image: .*non-public address"):
        check_url_host(url_for(address), "reference_image", SETTINGS)


@pytest.mark.parametrize("address", ALLOWED)
def test_global_addresses_pass(address):
    assert check_url_host(url_for(address), "reference_image", SETTINGS) == [address]


def fake_resolver(monkeypatch, answers: list[str]) -> None:
    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        assert host == "images.example"
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in answers]
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("answers", [
    ["93.184.216.34", "10.0.0.7"], ["10.0.0.7", "93.184.216.34"], ["2606:4700::1", "::ffff:169.254.169.254"],
    ["93.184.216.34", "100.100.100.200"],
])
def test_a_name_with_any_non_global_address_is_refused(monkeypatch, answers):
    fake_resolver(monkeypatch, answers)
    with pytest.raises(RequestError, match="reference_image: images.example resolves to .*non-public address"):
        check_url_host("https://images.example/x.png", "reference_image", SETTINGS)


def test_a_name_with_only_global_addresses_gives_every_address_to_connect_to(monkeypatch):
    fake_resolver(monkeypatch, ["93.184.216.34", "2606:4700::1", "93.184.216.34"])
    assert check_url_host("https://images.example/x.png", "f", SETTINGS) == ["93.184.216.34", "2606:4700::1"]


def test_allowed_hosts_and_schemes():
    assert check_url_host("http://127.0.0.1/x.png", "f", Settings(reference_url_allowed_hosts=["127.0.0.1"])) \
        == ["127.0.0.1"]
    with pytest.raises(RequestError, match="f: only http"):
        check_url_host("ftp://example.com/x.png", "f", SETTINGS)


@pytest.mark.parametrize("url, message", [
    ("http://example.com:99999/x.png", "not a valid URL .*Port out of range"),
    ("http://example.com:-1/x.png", "not a valid URL .*Port could not be cast"),
    ("http://example.com:abc/x.png", "not a valid URL .*Port could not be cast"),
    ("http://[::1/x.png", "not a valid URL .*Invalid IPv6 URL"),
    ("http:///x.png", "the URL has no host"),
    ("http://" + "x" * 70 + ".example/x.png", "cannot resolve"),  # a DNS label over 63 characters
])
def test_malformed_urls_name_the_field(url, message):
    with pytest.raises(RequestError, match=f"^reference_image: {message}"):
        check_url_host(url, "reference_image", SETTINGS)
