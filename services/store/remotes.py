"""Where names without a registry of their own are pulled from: the store's remote settings,
shared by the registry pull (transfer.py) and the Hugging Face pull (hf_hub.py)."""

from __future__ import annotations

from dataclasses import dataclass

OLLAMA_REGISTRY = "registry.ollama.ai"


@dataclass(frozen=True)
class Remotes:
    """Where names without a registry of their own are pulled from (the store's settings)."""

    default_registry: str = OLLAMA_REGISTRY  # "host[:port]", "https://host[:port]" or "http://host[:port]"
    hf_endpoint: str = ""                    # "" : $HF_ENDPOINT, else https://huggingface.co
    hf_token_file: str = ""                  # "" : $HF_TOKEN, else huggingface_hub's saved token

    @classmethod
    def from_settings(cls, settings: object) -> Remotes:
        return cls(getattr(settings, "default_registry", OLLAMA_REGISTRY) or OLLAMA_REGISTRY,
                   getattr(settings, "hf_endpoint", ""), getattr(settings, "hf_token_file", ""))
