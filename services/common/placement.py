"""Distributed placement: where one model's group of MLX processes runs, and how it is split.

A placement names the hosts of a group (rank 0 first: this machine, the worker the gateway talks
to) and a strategy: `pipeline` (each rank holds a contiguous run of layers) or `tensor` (each rank
holds a slice of every layer), on one of MLX's distributed backends (`ring`: TCP, works anywhere;
`nccl`, `mpi`, `jaccl` where available). Hosts come as `host[:port]` strings or from a hostfile in
the format `mlx.launch --hostfile` reads. The supervisor starts the ranks; `mx.distributed` moves
the activations between them.

Plain data and parsing here; no process is started and no address is contacted.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import InvalidArgument

STRATEGIES = ("pipeline", "tensor")
BACKENDS = ("ring", "nccl", "mpi", "jaccl", "jaccl-ring")
# mlx.launch's default first ring port; rank r listens on port + r unless its host names a port.
DEFAULT_GROUP_PORT = 32323
# Hosts that mean "this machine": their ranks are started here, without ssh (as mlx.launch does
# for 127.0.0.1). Any other name, 127.0.0.2 included, is reached over ssh.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PLACEMENT_KEYS = ("hosts", "hostfile", "strategy", "backend", "python", "rank_memory", "port", "model_dir")
# Where remote hosts keep their copy of a model (relative to the remote home unless absolute).
DEFAULT_MODEL_DIR = ".mlxserve/cache/group"

_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?")


@dataclass(frozen=True)
class GroupHost:
    """One rank's host: `ssh` is where it is started, `ip` where the other ranks reach it."""

    ssh: str
    ip: str = ""    # "" when `ssh` is a name: resolved when the group starts
    port: int = 0   # its ring port; 0: the placement's port + rank

    @property
    def local(self) -> bool:
        return self.ssh in LOCAL_HOSTS

    def label(self) -> str:
        host = f"[{self.ssh}]" if ":" in self.ssh else self.ssh
        return f"{host}:{self.port}" if self.port else host


@dataclass(frozen=True)
class Placement:
    """A group of ranks for one model (see the module docstring)."""

    hosts: tuple[GroupHost, ...]
    strategy: str = "pipeline"
    backend: str = "ring"
    python: str = ""        # the interpreter on remote hosts ("": the same path as this one)
    rank_memory: int = 0    # bytes each rank may hold (0: this host's memory budget)
    port: int = DEFAULT_GROUP_PORT
    model_dir: str = DEFAULT_MODEL_DIR  # where remote hosts keep the model's files (copied there by digest)
    source: str = field(default="", compare=False)  # where it was set, for messages

    @property
    def size(self) -> int:
        return len(self.hosts)

    def ring_addresses(self, ips: Mapping[str, str] | None = None) -> list[str]:
        """`ip:port` each rank listens on for the ring backend; `ips` maps names resolved at start."""
        out = []
        for rank, host in enumerate(self.hosts):
            ip = host.ip or (ips or {}).get(host.ssh, "")
            if not ip:
                raise InvalidArgument(f"host {host.ssh!r} (rank {rank}) has no IP address: give one in a hostfile (\"ips\")")
            address = f"[{ip}]" if ":" in ip else ip
            out.append(f"{address}:{host.port or self.port + rank}")
        return out

    def mlx_ring_hostfile(self, ips: Mapping[str, str] | None = None) -> str:
        """The MLX_HOSTFILE the ring backend reads: one list of addresses per rank."""
        return json.dumps([[a] for a in self.ring_addresses(ips)])

    def describe(self) -> str:
        hosts = ", ".join(h.label() for h in self.hosts)
        return f"{self.size} ranks on {hosts} ({self.strategy}, {self.backend})"

    def to_dict(self) -> dict[str, Any]:
        """The form `from_dict` reads back (what the store keeps with a model)."""
        out: dict[str, Any] = {
            "hosts": [h.label() if not h.ip or h.ip == h.ssh else {"ssh": h.ssh, "ips": [h.ip], **({"port": h.port} if h.port else {})}
                      for h in self.hosts],
            "strategy": self.strategy, "backend": self.backend,
        }
        if self.python:
            out["python"] = self.python
        if self.rank_memory:
            out["rank_memory"] = self.rank_memory
        if self.port != DEFAULT_GROUP_PORT:
            out["port"] = self.port
        if self.model_dir != DEFAULT_MODEL_DIR:
            out["model_dir"] = self.model_dir
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def parse_host(text: str) -> GroupHost:
    """`host`, `host:port`, `[v6]:port` -> GroupHost (an IP host is its own ip)."""
    m = _HOST.fullmatch(text.strip())
    if not m:
        raise InvalidArgument(f"host {text!r} is not host[:port]")
    host = m.group("v6") or m.group("name")
    port = int(m.group("port") or 0)
    if m.group("port") and not 0 < port < 65536:
        raise InvalidArgument(f"host {text!r}: port must be 1-65535")
    return GroupHost(ssh=host, ip=host if _is_ip(host) else ("127.0.0.1" if host == "localhost" else ""), port=port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _host_entry(entry: Any, where: str) -> GroupHost:
    """One entry of `hosts`: a `host[:port]` string, or a hostfile object {"ssh", "ips", "port"}."""
    if isinstance(entry, str):
        return parse_host(entry)
    if isinstance(entry, Mapping):
        ssh = entry.get("ssh")
        if not isinstance(ssh, str) or not ssh:
            raise InvalidArgument(f"{where}: every host needs \"ssh\" (a host name or address)")
        ips = entry.get("ips") or []
        if not isinstance(ips, list) or not all(isinstance(i, str) and _is_ip(i) for i in ips):
            raise InvalidArgument(f"{where}: host {ssh!r}: \"ips\" must be a list of IP addresses")
        port = entry.get("port", 0)
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise InvalidArgument(f"{where}: host {ssh!r}: port must be 1-65535")
        base = parse_host(ssh)
        return GroupHost(ssh=base.ssh, ip=ips[0] if ips else base.ip, port=port or base.port)
    raise InvalidArgument(f"{where}: a host is \"host[:port]\" or {{\"ssh\": ..., \"ips\": [...]}}, got {entry!r}")


def read_hostfile(path: str | Path) -> tuple[list[GroupHost], str]:
    """Hosts (and backend, "" if unsaid) from a hostfile in mlx.launch's JSON format: a list of
    {"ssh", "ips"} objects, or {"backend", "hosts": [...]}."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise InvalidArgument(f"hostfile {p}: {e.strerror or e}") from e
    except ValueError as e:
        raise InvalidArgument(f"hostfile {p} is not JSON: {e}") from e
    backend = ""
    if isinstance(data, Mapping):
        backend = data.get("backend", "") or ""
        data = data.get("hosts")
    if not isinstance(data, list) or not data:
        raise InvalidArgument(f"hostfile {p}: expected a list of hosts (or {{\"hosts\": [...]}})")
    return [_host_entry(e, f"hostfile {p}") for e in data], str(backend)


def parse_placement(raw: Mapping[str, Any] | str, *, source: str = "placement", base_dir: Path | None = None) -> Placement:
    """A placement from a mapping (config table, ModelSpec key, API field) or its JSON text.

    Keys: hosts (a list, or one comma-separated string), hostfile (instead of hosts), strategy,
    backend, python, rank_memory (bytes), port. Raises InvalidArgument naming `source`."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise InvalidArgument(f"{source}: not JSON: {e}") from e
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{source} must be a table with hosts (or hostfile) and strategy")
    unknown = set(raw) - set(PLACEMENT_KEYS)
    if unknown:
        raise InvalidArgument(f"{source}: unknown keys {sorted(unknown)}; use {list(PLACEMENT_KEYS)}")
    backend = raw.get("backend") or ""
    if raw.get("hostfile"):
        if raw.get("hosts"):
            raise InvalidArgument(f"{source}: give hosts or hostfile, not both")
        hostfile = Path(str(raw["hostfile"])).expanduser()
        if base_dir is not None and not hostfile.is_absolute():
            hostfile = base_dir / hostfile
        hosts, file_backend = read_hostfile(hostfile)
        backend = backend or file_backend
    else:
        given = raw.get("hosts")
        if isinstance(given, str):
            given = [h for h in (p.strip() for p in given.split(",")) if h]
        if not isinstance(given, list) or not given:
            raise InvalidArgument(f"{source}: hosts must be a list of host[:port] (rank 0 first: this machine)")
        hosts = [_host_entry(e, source) for e in given]
    if len(hosts) < 2:
        raise InvalidArgument(f"{source}: a group needs at least 2 hosts, got {len(hosts)}")
    if not hosts[0].local:
        raise InvalidArgument(f"{source}: the first host is rank 0, the worker this machine talks to: "
                              f"it must be this machine (127.0.0.1 or localhost), got {hosts[0].ssh!r}")
    strategy = raw.get("strategy") or "pipeline"
    if strategy not in STRATEGIES:
        raise InvalidArgument(f"{source}: strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    backend = backend or "ring"
    if backend not in BACKENDS:
        raise InvalidArgument(f"{source}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    try:
        rank_memory = int(raw.get("rank_memory") or 0)
        port = int(raw.get("port") or DEFAULT_GROUP_PORT)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{source}: rank_memory and port must be integers") from e
    if rank_memory < 0 or not 0 < port < 65536 - len(hosts):
        raise InvalidArgument(f"{source}: rank_memory must be >= 0 and port 1-65535")
    python = raw.get("python") or ""
    model_dir = raw.get("model_dir") or DEFAULT_MODEL_DIR
    if not isinstance(python, str) or not isinstance(model_dir, str):
        raise InvalidArgument(f"{source}: python and model_dir must be paths")
    placement = Placement(hosts=tuple(hosts), strategy=strategy, backend=backend, python=python,
                          rank_memory=rank_memory, port=port, model_dir=model_dir, source=source)
    if backend == "ring":
        addresses = [(h.ip or h.ssh, h.port or port + r) for r, h in enumerate(hosts)]
        dupes = {a for a in addresses if addresses.count(a) > 1}
        if dupes:
            ip, p = sorted(dupes)[0]
            raise InvalidArgument(f"{source}: two ranks would listen on {ip}:{p}; give each a different port")
    return placement


def placement_or_none(raw: Mapping[str, Any] | str | None, *, source: str = "placement") -> Placement | None:
    """`parse_placement` for an optional value ("", None, {} -> None)."""
    if not raw:
        return None
    return parse_placement(raw, source=source)
