"""Registry credentials: from our config file (`registry_auth`) and from Docker's config.json.

Lookup order for a registry host: an explicit `Credentials` handed to pull/push, then our
config's `registry_auth` table, then `$DOCKER_CONFIG/config.json` (default
`~/.docker/config.json`) `auths`. Docker credential helpers (`credsStore`) are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mlxserve.services.common.errors import InvalidArgument


@dataclass(frozen=True)
class Credentials:
    """A username and password (or an identity token used as a refresh token for bearer auth)."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    source: str = ""  # where they came from, for error messages ("config.toml", "~/.docker/config.json")

    def __repr__(self) -> str:  # never print secrets in logs or tracebacks
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def _from_entry(entry: Mapping[str, str], source: str, host: str) -> Credentials | None:
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as e:
            raise InvalidArgument(f"{source}: the auth entry for {host} is not base64 of 'user:password'") from e
        if not sep:
            raise InvalidArgument(f"{source}: the auth entry for {host} is not base64 of 'user:password'")
        return Credentials(user, password, entry.get("identitytoken", ""), source)
    if entry.get("username") or entry.get("identitytoken"):
        return Credentials(entry.get("username", ""), entry.get("password", ""), entry.get("identitytoken", ""), source)
    return None


def _host_keys(host: str) -> list[str]:
    """The spellings Docker's config uses for one registry host."""
    host = host.lower()
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"https://{host}/v1/"]
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        keys.append("https://index.docker.io/v1/")
    return keys


def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    folder = env.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(folder).expanduser() / "config.json"


class CredentialStore:
    """Looks up credentials for a registry host (see the module docstring for the order)."""

    def __init__(self, registry_auth: Mapping[str, Mapping[str, str]] | None = None,
                 docker_config: Path | None = None) -> None:
        self.registry_auth = {k.lower(): v for k, v in (registry_auth or {}).items()}
        self.docker_config = docker_config

    @classmethod
    def from_settings(cls, settings: object | None = None) -> CredentialStore:
        """Credentials from `settings.registry_auth` (loaded now when None) and Docker's config."""
        if settings is None:
            from mlxserve.services.common.config import load_settings

            settings = load_settings()
        return cls(getattr(settings, "registry_auth", {}) or {}, docker_config_path())

    def lookup(self, host: str) -> Credentials | None:
        host = host.lower()
        entry = self.registry_auth.get(host)
        if entry:
            return _from_entry(entry, "config.toml registry_auth", host)
        if self.docker_config and self.docker_config.is_file():
            try:
                auths = json.loads(self.docker_config.read_text()).get("auths") or {}
            except (OSError, ValueError, AttributeError) as e:
                raise InvalidArgument(f"Docker config {self.docker_config} is not readable JSON: {e}") from e
            by_key = {str(k).lower().rstrip("/"): v for k, v in auths.items() if isinstance(v, dict)}
            for key in _host_keys(host):
                entry = by_key.get(key.rstrip("/"))
                if entry:
                    found = _from_entry(entry, str(self.docker_config), host)
                    if found:
                        return found
        return None


def resolve_credentials(host: str, credentials: Credentials | CredentialStore | None) -> Credentials | None:
    """The credentials pull/push use for `host`: explicit ones, a store's lookup, or the defaults."""
    if isinstance(credentials, Credentials):
        return credentials
    store = credentials if isinstance(credentials, CredentialStore) else CredentialStore.from_settings()
    return store.lookup(host)
