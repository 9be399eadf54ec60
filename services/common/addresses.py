"""Where the store may connect: one address filter for every outgoing connection.

A pull names its host (`/api/pull {"model": "HOST:PORT/ns/name"}`), and registries redirect
(a blob to a CDN is normal), so without a filter the store would connect wherever a caller or a
remote says. `Guard.connect` resolves the name once, refuses it if any of its addresses is one
that a model source never is, and connects to an address it checked (so DNS cannot answer
differently between the check and the connection). Never reached, whatever the name:

- link-local addresses (169.254.0.0/16, fe80::/10), where cloud metadata services live;
- cloud metadata addresses and names (169.254.169.254, fd00:ec2::254, 100.100.100.200,
  metadata.google.internal, ...), IPv4 ones inside IPv6 (::ffff:a.b.c.d, 64:ff9b::a.b.c.d) too;
- unspecified (0.0.0.0/8, ::), multicast (224.0.0.0/4, ff00::/8), broadcast and reserved (240.0.0.0/4).

Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) and loopback stay reachable: a registry on
the LAN or on this machine is legitimate. Plain http (`insecure`) is allowed to loopback and to
the hosts the `insecure_registries` setting names (`host`, `host:port`, `*.lan`, or a network
`192.168.1.0/24`, as Docker's `insecure-registries`), and to the endpoints configured as http://.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable, Iterable

from .errors import Forbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_net = ipaddress.ip_network
_METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle ...
    "169.254.170.2",    # AWS ECS task metadata
    "fd00:ec2::254",    # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",    # Azure's wire server
))
# Checked after _METADATA, in this order: the first class an address falls in names it in the refusal.
_REFUSED: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    ("link-local", (_net("169.254.0.0/16"), _net("fe80::/10"))),
    ("unspecified", (_net("0.0.0.0/8"), _net("::/128"))),
    ("multicast", (_net("224.0.0.0/4"), _net("ff00::/8"))),
    ("broadcast or reserved", (_net("240.0.0.0/4"),)),
)
METADATA_NAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.internal", "metadata.tencentyun.com",
})
LOOPBACK = (_net("127.0.0.0/8"), _net("::1/128"))
_NAT64 = _net("64:ff9b::/96")

Resolver = Callable[[str, int], list[str]]
Connector = Callable[[tuple[str, int], float | None], socket.socket]


def refusal(address: str | IPAddress) -> str | None:
    """Why the store never connects to `address` ("link-local", "cloud metadata"...), or None."""
    ip: IPAddress = ipaddress.ip_address(str(address).split("%")[0])  # fe80::1%eth0: the zone does not matter
    if isinstance(ip, ipaddress.IPv6Address):  # an IPv4 address carried in IPv6 is that IPv4 address
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _METADATA:
        return "a cloud metadata address"
    if str(ip) == "255.255.255.255":
        return "the broadcast address"
    for reason, networks in _REFUSED:
        if any(ip in n for n in networks if n.version == ip.version):
            return f"a {reason} address"
    return None


@dataclass(frozen=True)
class HostPattern:
    """One `insecure_registries` entry: a host glob with an optional port, or a network."""

    text: str
    host: str = ""                   # lower-case glob ("*.lan", "registry.local", "192.168.1.5")
    port: int | None = None
    network: IPNetwork | None = None

    def matches(self, host: str, port: int, addresses: list[str]) -> bool:
        if self.network is not None:
            return bool(addresses) and all(_in(a, (self.network,)) for a in addresses)
        return fnmatchcase(_bare(host), self.host) and self.port in (None, port)


def parse_pattern(text: str) -> HostPattern:
    """`host`, `host:port`, `*.lan`, `[::1]:5000`, `10.0.0.0/8` or `fd00::/8`; ValueError otherwise."""
    raw = text.strip()
    if "/" in raw:
        try:
            return HostPattern(raw, network=ipaddress.ip_network(raw, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not a network (10.0.0.0/8, fd00::/8)") from None
    host, port = raw, None
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not [IPv6] or [IPv6]:port")
            port = _port(text, rest[1:])
    elif raw.count(":") == 1:
        host, _, p = raw.partition(":")
        port = _port(text, p)
    host = _bare(host)
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"{text!r} is not a host pattern (host, host:port, *.domain)")
    return HostPattern(raw, host=host, port=port)


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{text!r} has no valid port")
    return int(value)


def _bare(host: str) -> str:
    """A host name as compared: lower case, no trailing dot, IPv6 without brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def _in(address: str, networks: Iterable[IPNetwork]) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in n for n in networks if n.version == ip.version)


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (TCP), in the order the system prefers."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _system_connector(address: tuple[str, int], timeout: float | None) -> socket.socket:
    return socket.create_connection(address, timeout)  # looked up per call: tests may wrap it


class Guard:
    """The address filter: every outgoing connection of the store goes through `connect`.

    `insecure_hosts`: patterns (see parse_pattern) of hosts that plain http may reach besides
    loopback. `resolver` and `connector` are injectable so that tests connect nowhere.
    """

    def __init__(self, insecure_hosts: Iterable[str] = (), *, resolver: Resolver | None = None,
                 connector: Connector | None = None) -> None:
        self.patterns = tuple(parse_pattern(p) for p in insecure_hosts)
        self._resolve = resolver or system_resolver
        self._connect = connector or _system_connector

    def allows_insecure(self, host: str, port: int, addresses: list[str]) -> bool:
        """Whether plain http may go to `host:port`, which resolved to `addresses`."""
        if addresses and all(_in(a, LOOPBACK) for a in addresses):
            return True
        return any(p.matches(host, port, addresses) for p in self.patterns)

    def check(self, host: str, port: int, *, insecure: bool) -> list[str]:
        """The addresses of `host` that a connection may use; Forbidden if it must not be made.

        Name resolution fails as an OSError (socket.gaierror), like a connection would.
        """
        name = _bare(host)
        if name in METADATA_NAMES or name.endswith(".metadata.google.internal"):
            raise Forbidden(f"{host} is a cloud metadata service; mlxserve never connects to it")
        addresses = self._resolve(name, port)
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        for address in addresses:
            if (reason := refusal(address)) is not None:
                shown = host if _bare(host) == address else f"{host} ({address})"
                raise Forbidden(f"{shown} is {reason}; mlxserve never connects there")
        if insecure and not self.allows_insecure(host, port, addresses):
            where = f"{host}:{port}"
            raise Forbidden(f"plain http (insecure) to {where} is not allowed: only loopback and the hosts in the "
                            f"insecure_registries setting may be reached without TLS; add {where!r} there "
                            "(config.toml) if you trust it")
        return addresses

    def connect(self, host: str, port: int, timeout: float | None, *, insecure: bool) -> socket.socket:
        """A TCP connection to `host:port` through an address `check` allowed (the first that answers)."""
        error: OSError | None = None
        for address in self.check(host, port, insecure=insecure):
            try:
                return self._connect((address, port), timeout)
            except OSError as e:
                error = e
        assert error is not None
        raise error
