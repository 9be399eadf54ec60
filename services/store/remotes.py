"""Where names without a registry of their own are pulled from, and where plain http may go: the
store's remote settings, shared by the registry pull (transfer.py) and the Hugging Face pull
(hf_hub.py)."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass

from mlxserve.services.common.addresses import Guard

OLLAMA_REGISTRY = "registry.ollama.ai"


@dataclass(frozen=True)
class Remotes:
    """Where names without a registry of their own are pulled from (the store's settings)."""

    default_registry: str = OLLAMA_REGISTRY  # "host[:port]", "https://host[:port]" or "http://host[:port]"
    hf_endpoint: str = ""                    # "" : $HF_ENDPOINT, else https://huggingface.co
    hf_token_file: str = ""                  # "" : $HF_TOKEN, else huggingface_hub's saved token
    insecure_registries: tuple[str, ...] = ()  # hosts plain http may reach besides loopback (addresses.py)

    @classmethod
    def from_settings(cls, settings: object) -> Remotes:
        return cls(getattr(settings, "default_registry", OLLAMA_REGISTRY) or OLLAMA_REGISTRY,
                   getattr(settings, "hf_endpoint", ""), getattr(settings, "hf_token_file", ""),
                   tuple(getattr(settings, "insecure_registries", ()) or ()))

    def guard(self) -> Guard:
        """The address filter of this store's pulls and pushes: `insecure_registries`, plus the
        endpoints configured as http:// (an explicit choice, as `registry_for` reads it)."""
        explicit = [_plain_host(self.default_registry), _plain_host(self.hf_endpoint or os.environ.get("HF_ENDPOINT", ""))]
        return Guard([*self.insecure_registries, *(h for h in explicit if h)])


def _plain_host(endpoint: str) -> str:
    """`host:port` of an http:// endpoint (port 80 if none), else ""."""
    parts = urllib.parse.urlsplit(endpoint.strip())
    if parts.scheme != "http" or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 80}"
