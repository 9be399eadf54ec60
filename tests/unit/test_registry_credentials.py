"""Registry credentials: our config's registry_auth first, then Docker's config.json; secrets stay private."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store.credentials import Credentials, CredentialStore, docker_config_path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_config_file_registry_auth_is_loaded_and_kept_out_of_child_env(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[registry_auth."Reg.Example:5000"]\nusername = "me"\npassword = "pw"\n'
                   f'[registry_auth."other.example"]\nauth = "{b64("u:p:with:colons")}"\n')
    settings = load_settings(env={"MLXSERVE_CONFIG": str(cfg), "MLXSERVE_HOME": str(tmp_path)})
    creds = CredentialStore(settings.registry_auth, None)
    assert creds.lookup("reg.example:5000") == Credentials("me", "pw", "", "config.toml registry_auth")
    other = creds.lookup("other.example")
    assert other is not None and (other.username, other.password) == ("u", "p:with:colons")
    assert not any("REGISTRY_AUTH" in k for k in settings.to_env())
    assert "pw" not in repr(creds.lookup("reg.example:5000"))


def test_bad_registry_auth_tables_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[registry_auth."h"]\nuser = "typo"\n')
    with pytest.raises(InvalidArgument, match="unknown keys"):
        load_settings(env={"MLXSERVE_CONFIG": str(cfg)})
    with pytest.raises(InvalidArgument, match="not base64"):
        CredentialStore({"h": {"auth": "%%%"}}, None).lookup("h")


def test_docker_config_auths_are_used_when_our_config_has_none(tmp_path: Path) -> None:
    docker = tmp_path / "config.json"
    docker.write_text(json.dumps({"auths": {
        "https://ghcr.example/": {"auth": b64("dock:er")},
        "plain.example:5000": {"username": "x", "password": "y"},
    }}))
    store = CredentialStore({"plain.example:5000": {"username": "ours", "password": "wins"}}, docker)
    ghcr = store.lookup("ghcr.example")
    assert ghcr is not None and (ghcr.username, ghcr.password, ghcr.source) == ("dock", "er", str(docker))
    ours = store.lookup("plain.example:5000")
    assert ours is not None and ours.username == "ours"
    assert store.lookup("nowhere.example") is None
    assert docker_config_path({"DOCKER_CONFIG": str(tmp_path)}) == docker
