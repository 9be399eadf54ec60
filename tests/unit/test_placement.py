"""Distributed placements: how a user names a group of hosts (config, ModelSpec, mlxctl create,
/api/create), what the ranks are told (MLX's ring hostfile), and what is refused before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxserve.cli.models import create_request, placement_json
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.common.placement import DEFAULT_GROUP_PORT, parse_placement
from mlxserve.services.store.recipes import parse_modelspec
from mlxserve.services.store.store import ModelStore
from tests.fixtures.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "src")


def test_two_local_ranks_listen_on_consecutive_ports_in_mlx_ring_hostfile_format() -> None:
    p = parse_placement({"hosts": ["127.0.0.1", "localhost"]})
    assert p.size == 2 and p.strategy == "pipeline" and p.backend == "ring"
    assert json.loads(p.mlx_ring_hostfile()) == [[f"127.0.0.1:{DEFAULT_GROUP_PORT}"], [f"127.0.0.1:{DEFAULT_GROUP_PORT + 1}"]]
    assert all(h.local for h in p.hosts)


def test_hosts_take_ports_ipv6_and_a_comma_separated_string() -> None:
    p = parse_placement({"hosts": "127.0.0.1:40000, [fe80::1]:40001, 10.0.0.2", "port": 41000, "strategy": "tensor"})
    assert [h.label() for h in p.hosts] == ["127.0.0.1:40000", "[fe80::1]:40001", "10.0.0.2"]
    assert json.loads(p.mlx_ring_hostfile()) == [["127.0.0.1:40000"], ["[fe80::1]:40001"], ["10.0.0.2:41002"]]
    assert not p.hosts[1].local and p.strategy == "tensor"
    assert "3 ranks" in p.describe() and "tensor" in p.describe()


def test_a_host_known_by_name_needs_its_ip_resolved_before_the_ring_starts() -> None:
    p = parse_placement({"hosts": ["localhost", "mac-studio.local"]})
    with pytest.raises(InvalidArgument, match="mac-studio.local"):
        p.mlx_ring_hostfile()
    assert json.loads(p.mlx_ring_hostfile({"mac-studio.local": "192.168.1.20"}))[1] == [f"192.168.1.20:{DEFAULT_GROUP_PORT + 1}"]


def test_an_mlx_launch_hostfile_gives_hosts_their_ips_and_backend(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"backend": "ring", "hosts": [
        {"ssh": "localhost", "ips": ["127.0.0.1"]}, {"ssh": "mac2", "ips": ["10.1.0.2"], "port": 5000}]}))
    p = parse_placement({"hostfile": "hosts.json"}, base_dir=tmp_path)
    assert [(h.ssh, h.ip, h.port) for h in p.hosts] == [("localhost", "127.0.0.1", 0), ("mac2", "10.1.0.2", 5000)]
    # What the store keeps: the hosts themselves, so the model does not depend on the file.
    again = parse_placement(p.to_dict())
    assert again == p


@pytest.mark.parametrize(("raw", "message"), [
    ({"hosts": ["10.0.0.2", "127.0.0.1"]}, "first host is rank 0"),
    ({"hosts": ["127.0.0.1"]}, "at least 2 hosts"),
    ({"hosts": ["127.0.0.1", "127.0.0.1:32323"]}, "two ranks would listen on 127.0.0.1:32323"),
    ({"hosts": ["127.0.0.1", "h"], "strategy": "expert"}, "strategy must be one of pipeline, tensor"),
    ({"hosts": ["127.0.0.1", "h"], "backend": "carrier-pigeon"}, "backend must be one of"),
    ({"hosts": ["127.0.0.1", "h"], "gpus": 2}, "unknown keys"),
    ({"hosts": ["127.0.0.1", "h:99999"]}, "port must be 1-65535"),
    ({"hosts": ["127.0.0.1", "bad host!"]}, "is not host"),
    ({"hosts": ["127.0.0.1", "h"], "hostfile": "x.json"}, "not both"),
    ({"hostfile": "/nonexistent/hosts.json"}, "hostfile /nonexistent/hosts.json"),
    ({}, "hosts must be a list"),
])
def test_a_bad_placement_is_refused_with_what_is_wrong(raw: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_placement(raw)


def test_config_sets_the_fallback_group_and_per_model_groups_and_children_read_them_back(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[distributed]\nhosts = ["127.0.0.1", "10.0.0.2"]\nrank_memory = 1000\n'
        '[placements."smollm2:135m"]\nhosts = "127.0.0.1,127.0.0.1:40000"\nstrategy = "pipeline"\n')
    settings = load_settings(env={"MLXSERVE_HOME": str(tmp_path)})
    assert parse_placement(settings.distributed).rank_memory == 1000
    assert parse_placement(settings.placements["smollm2:135m"]).hosts[1].port == 40000
    child = load_settings(env=settings.to_env())  # what the supervisor hands its workers
    assert child.distributed == settings.distributed and child.placements == settings.placements
    assert load_settings(env={"MLXSERVE_HOME": str(tmp_path / "none")}).distributed == {}


def test_a_bad_placement_in_the_config_stops_the_start_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[placements.big]\nhosts = ["10.0.0.9", "127.0.0.1"]\n')
    with pytest.raises(InvalidArgument, match="placements.big: the first host is rank 0"):
        load_settings(env={"MLXSERVE_HOME": str(tmp_path)})


def test_a_modelspec_placement_is_kept_with_the_model_and_shown(tiny: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    (tmp_path / "hosts.json").write_text(json.dumps([{"ssh": "127.0.0.1"}, {"ssh": "studio", "ips": ["10.0.0.7"]}]))
    spec = parse_modelspec(f"from: {tiny}\nplacement:\n  hostfile: hosts.json\n  strategy: pipeline\n", tmp_path)
    store.create("grouped", spec)
    resolved = store.resolve("grouped")
    assert parse_placement(resolved.config.placement).hosts[1].ip == "10.0.0.7"
    assert "2 ranks on 127.0.0.1, studio (pipeline, ring)" == store.show("grouped").model_info["mlxserve.placement"]
    # A model derived from it keeps the group unless the recipe clears it.
    store.create("derived", parse_modelspec("from: grouped\nsystem: hi\n", tmp_path))
    assert store.resolve("derived").config.placement == resolved.config.placement
    store.create("cleared", parse_modelspec("from: grouped\nplacement: {}\n", tmp_path))
    assert store.resolve("cleared").config.placement == {}
    assert "mlxserve.placement" not in store.show("cleared").model_info


def test_a_model_without_placement_keeps_its_config_bytes(tiny: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.create("plain", parse_modelspec(f"from: {tiny}\n", tmp_path))
    assert b"placement" not in store.config_of(store.get_manifest("plain")[2]).to_bytes()


def test_a_modelspec_with_a_bad_placement_is_refused_before_anything_is_created(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="first host is rank 0"):
        parse_modelspec(f"from: {tiny}\nplacement:\n  hosts: [10.0.0.2, 127.0.0.1]\n", tmp_path)


def test_mlxctl_create_flags_become_the_requests_placement(tmp_path: Path) -> None:
    raw = placement_json("127.0.0.1, 10.0.0.2:5000", None, "tensor", "ring")
    assert json.loads(raw) == {"hosts": ["127.0.0.1", "10.0.0.2:5000"], "strategy": "tensor", "backend": "ring"}
    assert create_request("m", None, "base", None, None, raw).placement_json == raw
    assert placement_json("none", None, None, None) == "{}"
    assert placement_json(None, None, None, None) == ""
    with pytest.raises(InvalidArgument, match="--strategy"):
        placement_json(None, None, "tensor", None)
