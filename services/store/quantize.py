"""Quantize an mlx-lm model folder on the way into the store, with mlx-lm's own quantization.

The folder is loaded lazily with `mlx_lm.utils.load_model`, quantized by
`mlx_lm.utils.quantize_model` (MLX affine quantization, `nn.quantize`), and saved with
`save_model`/`save_config`, so the result is exactly what `mlx_lm.convert -q` writes. Works on
the CPU backend too. An already-quantized source is refused: quantizing twice loses accuracy
for nothing, and mlx-lm cannot requantize packed weights.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

from mlxserve.services.common.errors import InvalidArgument

from .progress import ProgressCallback, ProgressEvent, no_progress


def is_quantized(config: dict) -> bool:
    return isinstance(config.get("quantization"), dict) or isinstance(config.get("quantization_config"), dict)


def quantize_folder(src: Path, out: Path, bits: int, group_size: int,
                    progress: ProgressCallback = no_progress, source: str = "") -> dict:
    """Write a `bits`-bit, `group_size` quantized copy of the model folder `src` into `out`.

    Non-weight files (tokenizer, templates, license...) are linked or copied over unchanged.
    Returns the new config.json contents.
    """
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    config = json.loads((src / "config.json").read_text())
    label = source or src.name
    if is_quantized(config):
        q = config.get("quantization") or config.get("quantization_config") or {}
        raise InvalidArgument(
            f"{label} is already quantized ({q.get('bits', '?')}-bit); re-quantizing is not supported: "
            "create from the unquantized weights instead"
        )
    progress(ProgressEvent(f"quantizing to q{bits} (group size {group_size})"))
    try:
        model, config = load_model(src, lazy=True)
    except (ValueError, FileNotFoundError) as e:
        raise InvalidArgument(f"{label} cannot be loaded by mlx-lm for quantization: {e}") from None
    with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints a summary line
        model, qconfig = quantize_model(model, config, group_size, bits)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model, donate_model=True)
    index = out / "model.safetensors.index.json"
    if index.is_file() and len(set(json.loads(index.read_text())["weight_map"].values())) == 1:
        index.unlink()  # a single shard needs no index (and mlx-lm does not need one)
    save_config(qconfig, config_path=out / "config.json")
    for p in sorted(src.iterdir()):
        if (p.name == "config.json" or p.name.endswith(".safetensors") or p.name.endswith(".safetensors.index.json")
                or not p.is_file() or (out / p.name).exists()):
            continue
        try:
            os.link(p.resolve(), out / p.name)
        except OSError:
            shutil.copyfile(p, out / p.name)
    progress(ProgressEvent("quantized", total=1, completed=1))
    return json.loads((out / "config.json").read_text())
