"""Where the store connects (issue 21, item 3): the address filter every pull and push goes
through, the plain-http allow-list, and what of a remote's answer reaches the user.

Nothing here connects anywhere: the filter gets a fake resolver and a connector that fails the
test if it is ever called for a refused address.
"""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

import pytest

from mlxserve.services.common.addresses import Guard, parse_pattern, refusal
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import Forbidden, InvalidArgument
from mlxserve.services.store.connections import clean_text, describe_failure, status_line
from mlxserve.services.store.credentials import CredentialStore
from mlxserve.services.store.registry import RegistryClient
from mlxserve.services.store.remotes import Remotes
from mlxserve.services.store.store import ModelStore
from mlxserve.services.store.transfer import pull


class Net:
    """A fake DNS and a connector that records where connections would go."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.resolved: list[str] = []
        self.connected: list[tuple[str, int]] = []

    def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append(host)
        return self.answers.get(host, [host])  # an IP literal resolves to itself

    def connect(self, address: tuple[str, int], timeout: float | None) -> socket.socket:
        self.connected.append(address)
        return socket.socket()  # never used: the tests only look at where it would have gone

    def guard(self, *patterns: str) -> Guard:
        return Guard(patterns, resolver=self.resolve, connector=self.connect)


REFUSED = [
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("169.254.1.7", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.251", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("::ffff:169.254.169.254", "cloud metadata"),  # IPv4 inside IPv6 is still that IPv4 address
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),      # ... through NAT64 too
]


@pytest.mark.parametrize("address, reason", REFUSED)
def test_a_refused_address_is_never_connected_to(address: str, reason: str) -> None:
    net = Net()
    with pytest.raises(Forbidden, match=reason):
        net.guard().connect(address, 443, 5.0, insecure=False)
    assert net.connected == []
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.9", "192.168.1.20", "fd12::5",
                                     "8.8.8.8", "2606:4700::1111", "169.255.0.1"])
def test_loopback_private_and_public_addresses_are_reachable_over_tls(address: str) -> None:
    net = Net()
    net.guard().connect(address, 443, 5.0, insecure=False)
    assert net.connected == [(address, 443)]


def test_a_name_that_resolves_to_a_refused_address_is_refused_even_among_good_ones() -> None:
    net = Net({"innocent.example": ["203.0.113.7", "169.254.169.254"]})
    with pytest.raises(Forbidden, match=r"innocent.example \(169.254.169.254\) is a cloud metadata address"):
        net.guard().connect("innocent.example", 443, 5.0, insecure=False)
    assert net.connected == []


@pytest.mark.parametrize("name", ["metadata.google.internal", "METADATA.Google.Internal.", "metadata",
                                  "instance-data.ec2.internal"])
def test_metadata_service_names_are_refused_without_even_resolving_them(name: str) -> None:
    net = Net()
    with pytest.raises(Forbidden, match="cloud metadata service"):
        net.guard().connect(name, 80, 5.0, insecure=True)
    assert net.resolved == [] and net.connected == []


def test_the_connection_goes_to_the_address_that_was_checked_resolved_once() -> None:
    # A rebinding DNS would answer a good address to the check and a bad one to the connect:
    # there is only one resolution, and the socket goes to its answer.
    answers = iter([["198.51.100.4"], ["169.254.169.254"]])
    resolved: list[str] = []
    connected: list[tuple[str, int]] = []

    def rebinding(host: str, port: int) -> list[str]:
        resolved.append(host)
        return next(answers)

    def connector(address: tuple[str, int], timeout: float | None) -> socket.socket:
        connected.append(address)
        return socket.socket()

    Guard(resolver=rebinding, connector=connector).connect("rebind.example", 443, 5.0, insecure=False).close()
    assert resolved == ["rebind.example"] and connected == [("198.51.100.4", 443)]


def test_plain_http_goes_to_loopback_only_unless_the_host_is_listed() -> None:
    net = Net({"localhost": ["127.0.0.1", "::1"], "nas.lan": ["192.168.1.20"], "registry.example": ["203.0.113.5"]})
    guard = net.guard()
    guard.connect("localhost", 5000, 5.0, insecure=True)
    guard.connect("127.0.0.1", 5000, 5.0, insecure=True)
    for host in ("192.168.1.20", "nas.lan", "registry.example"):
        with pytest.raises(Forbidden, match=r"plain http \(insecure\) to .* insecure_registries"):
            guard.connect(host, 5000, 5.0, insecure=True)
    guard.connect("nas.lan", 443, 5.0, insecure=False)  # TLS to the LAN host is fine
    assert [a for a, _ in net.connected] == ["127.0.0.1", "127.0.0.1", "192.168.1.20"]


@pytest.mark.parametrize("pattern, host, port, allowed", [
    ("192.168.1.0/24", "nas.lan", 5000, True),     # a network matches the resolved address
    ("192.168.1.0/24", "10.0.0.8", 5000, False),
    ("nas.lan", "NAS.lan.", 5000, True),            # a name, any port
    ("nas.lan:5000", "nas.lan", 5000, True),
    ("nas.lan:5000", "nas.lan", 5001, False),      # a name with a port: that port only
    ("*.lan", "nas.lan", 80, True),
    ("*.lan", "nas.lan.example", 80, False),
    ("[fd12::5]:5000", "fd12::5", 5000, True),
])
def test_insecure_registries_patterns(pattern: str, host: str, port: int, allowed: bool) -> None:
    net = Net({"nas.lan": ["192.168.1.20"], "nas.lan.example": ["203.0.113.9"]})
    guard = net.guard(pattern)
    if allowed:
        guard.connect(host, port, 5.0, insecure=True)
    else:
        with pytest.raises(Forbidden):
            guard.connect(host, port, 5.0, insecure=True)


def test_an_allow_listed_network_never_opens_a_refused_address() -> None:
    net = Net()
    with pytest.raises(Forbidden, match="link-local"):
        net.guard("169.254.0.0/16", "*").connect("169.254.1.1", 80, 5.0, insecure=True)
    assert net.connected == []


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "host:99999", "host:port", "a b", "[::1]x", ""])
def test_a_bad_insecure_registries_entry_is_refused_at_load(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(bad)
    with pytest.raises(InvalidArgument, match="insecure_registries"):
        load_settings(env={"MLXSERVE_INSECURE_REGISTRIES": f'["{bad}"]', "MLXSERVE_HOME": "/nonexistent-home"})


def test_insecure_registries_setting_reaches_the_stores_guard() -> None:
    settings = load_settings(env={"MLXSERVE_INSECURE_REGISTRIES": "nas.lan:5000,10.0.0.0/8",
                                  "MLXSERVE_HOME": "/nonexistent-home"})
    assert settings.insecure_registries == ("nas.lan:5000", "10.0.0.0/8")
    assert [p.text for p in Remotes.from_settings(settings).guard().patterns] == ["nas.lan:5000", "10.0.0.0/8"]


def test_endpoints_configured_as_http_are_an_explicit_choice_for_their_host_and_port(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    guard = Remotes(default_registry="http://mirror.lan:5000", hf_endpoint="http://hub.lan").guard()
    assert guard.allows_insecure("mirror.lan", 5000, ["192.168.1.3"])
    assert not guard.allows_insecure("mirror.lan", 5001, ["192.168.1.3"])
    assert guard.allows_insecure("hub.lan", 80, ["192.168.1.4"])
    assert not Remotes(default_registry="https://mirror.lan:5000").guard().allows_insecure(
        "mirror.lan", 5000, ["192.168.1.3"])


def test_a_registry_client_for_a_metadata_address_refuses_before_connecting() -> None:
    net = Net()
    client = RegistryClient("169.254.169.254", insecure=True, guard=net.guard("*"))
    with pytest.raises(Forbidden, match="cloud metadata"):
        client.get_manifest("latest/meta-data", "iam")
    assert net.connected == []


@pytest.mark.parametrize("model, reason", [
    ("169.254.169.254/latest/meta-data:iam", "cloud metadata address"),
    ("metadata.google.internal/computemetadata/v1:latest", "cloud metadata service"),
    ("169.254.10.10:5000/a/b", "link-local"),
    ("0.0.0.0:5000/a/b", "unspecified"),
])
def test_pull_refuses_forbidden_registries_without_connecting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, reason: str) -> None:
    attempts: list[object] = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: attempts.append(a) or pytest.fail(str(a)))
    with pytest.raises(Forbidden, match=reason):
        pull(ModelStore(tmp_path / "models"), model, insecure=True, credentials=CredentialStore(),
             remotes=Remotes(insecure_registries=("*",)))
    assert attempts == []


def test_remote_text_is_a_bounded_printable_status_line() -> None:
    assert status_line(404) == "404 Not Found"
    assert status_line(599) == "599"
    cleaned = clean_text("ok\x1b[31m\r\nInjected: yes\x00é" + "x" * 500, 40)
    assert cleaned.startswith("ok [31m Injected: yes xxx") and cleaned.endswith("...") and len(cleaned) == 40
    assert len(clean_text("y" * 1000)) == 160


@pytest.mark.parametrize("error", [
    http.client.BadStatusLine("SSH-2.0-OpenSSH_9.2p1 secret-banner"),
    http.client.LineTooLong("header line secret-banner"),
    http.client.UnknownProtocol("SECRET-BANNER/1.0"),
])
def test_a_non_http_answer_is_described_without_its_bytes(error: Exception) -> None:
    assert describe_failure(error) == "the server does not answer HTTP"


def test_a_refused_connection_is_described_in_the_systems_words() -> None:
    assert describe_failure(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert describe_failure(socket.timeout("timed out")) == "timed out"
