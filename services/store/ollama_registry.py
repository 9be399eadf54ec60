"""Pull from Ollama's registry (or any registry holding Ollama's image format): convert on arrival.

OWNER: helper (being written). `is_ollama_image` is final.
"""

from __future__ import annotations

import json

from .registry import DOCKER_MANIFEST

OLLAMA_MEDIA_PREFIX = "application/vnd.ollama.image."


def is_ollama_image(data: bytes, media_type: str) -> bool:
    """Whether a registry manifest is an Ollama image: Docker schema-2 whose layers carry
    Ollama's media types (`application/vnd.ollama.image.model`, `.template`, `.params`...)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    if not isinstance(doc, dict) or (doc.get("mediaType") or media_type) != DOCKER_MANIFEST:
        return False
    layers = doc.get("layers")
    return isinstance(layers, list) and any(
        isinstance(layer, dict) and str(layer.get("mediaType", "")).startswith(OLLAMA_MEDIA_PREFIX) for layer in layers)
