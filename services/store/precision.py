"""How a model's weights are stored, read from its view's config.json (for the supervisor's
memory estimate, sent with Resolve)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def weights_precision(view_path: str | os.PathLike[str]) -> tuple[int, str]:
    """(quantization bits or 0, the unquantized weights' dtype or "") from config.json."""
    try:
        config = json.loads((Path(view_path) / "config.json").read_text())
    except (OSError, ValueError):
        return 0, ""
    if not isinstance(config, dict):
        return 0, ""
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = quant.get("bits") if isinstance(quant, dict) else None
    dtype = config.get("torch_dtype") or config.get("dtype") or ""
    return (bits if isinstance(bits, int) and bits > 0 else 0), str(dtype)
