"""Write random-weight bf16 MLX model folders for the GPU benchmarks (run on the device machine).

    python tests/bench/gpu/make_models.py --tokenizer-dir .gpu/tok --out /root/models [--shape smollm2,llama8b]
                                          [--layers N] [--shard-gb 4]

Decode speed depends on the weights' shapes and dtype, not their values, so a model of a real
architecture filled with random numbers measures what a trained one would. Generating 15 GB here
costs seconds, carrying it would be impossible (64 MiB a call). Shapes written:

  smollm2   SmolLM2-135M (config.json of the store's view of the SmolLM2 GGUF, quantization dropped):
            576 hidden, 30 layers, 9 heads / 3 kv heads, 1536 intermediate, vocab 49152, tied embeddings.
  llama8b   Llama-3.1-8B's transformer (4096 hidden, 32 layers, 32 heads / 8 kv heads, 14336
            intermediate, llama3 RoPE scaling) with SmolLM2's tokenizer, so vocab 49152 instead of
            128256: the embedding and lm_head are 0.8 GB instead of 2.1 GB (7.38B parameters,
            14.8 GB in bf16, against 8.03B / 16.1 GB for the real one).

Both folders carry SmolLM2's tokenizer.json, tokenizer_config.json and chat template (from
--tokenizer-dir, written by prepare.sh). The output rows of the special tokens (EOS, <|im_end|>,
...) are zero, so their logit is exactly 0 while the largest of ~49k random logits is positive:
greedy decoding of random weights never stops early, and every request yields its full
max_tokens (a fair, fixed workload on every side).

--layers N overrides the layer count (a quick check on the CPU: --layers 1).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import mlx.core as mx

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "LICENSE")
INIT_STD = 0.02

LLAMA_8B: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-05,
    "vocab_size": 49152,  # SmolLM2's tokenizer (Llama-3.1's is 128256)
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "bfloat16",
}


def smollm2_config(tokenizer_dir: Path) -> dict[str, Any]:
    """SmolLM2-135M's config as the store imported it from the GGUF, made a plain bf16 config."""
    config = json.loads((tokenizer_dir / "config.json").read_text())
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    config["torch_dtype"] = "bfloat16"
    return config


def special_token_ids(tokenizer_dir: Path) -> list[int]:
    """Ids of the tokenizer's special added tokens (EOS, <|im_start|>, <|im_end|>, ...)."""
    doc = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    return sorted(t["id"] for t in doc.get("added_tokens", []) if t.get("special"))


def tensor_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """mlx-lm's llama parameter names and shapes for `config` (Linear weights are [out, in])."""
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or h // heads
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes += [
            (f"{p}.self_attn.q_proj.weight", (heads * hd, h)),
            (f"{p}.self_attn.k_proj.weight", (kv * hd, h)),
            (f"{p}.self_attn.v_proj.weight", (kv * hd, h)),
            (f"{p}.self_attn.o_proj.weight", (h, heads * hd)),
            (f"{p}.mlp.gate_proj.weight", (inter, h)),
            (f"{p}.mlp.up_proj.weight", (inter, h)),
            (f"{p}.mlp.down_proj.weight", (h, inter)),
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
        ]
    shapes.append(("model.norm.weight", (h,)))
    if not config.get("tie_word_embeddings", False):
        shapes.append(("lm_head.weight", (vocab, h)))
    return shapes


def make_tensor(name: str, shape: tuple[int, ...], special: list[int], output_name: str) -> mx.array:
    if name.endswith("layernorm.weight") or name == "model.norm.weight":
        return mx.ones(shape, dtype=mx.bfloat16)
    w = mx.random.normal(shape, dtype=mx.bfloat16, scale=INIT_STD)
    if name == output_name and special:
        # Special tokens get a zero logit: never the argmax of random logits (see the module doc).
        rows = mx.array(special)
        w[rows] = mx.zeros((len(special), shape[1]), dtype=mx.bfloat16)
    return w


def write_model(out: Path, config: dict[str, Any], tokenizer_dir: Path, shard_bytes: int) -> dict[str, Any]:
    """Write `out` (config.json, model[-NNNNN-of-NNNNN].safetensors, tokenizer files); return facts."""
    t0 = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    special = special_token_ids(tokenizer_dir)
    output_name = "model.embed_tokens.weight" if config.get("tie_word_embeddings", False) else "lm_head.weight"
    shapes = tensor_shapes(config)
    # Group tensors into shards of about shard_bytes, so that only one shard is ever in memory.
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        n = 2
        for d in shape:
            n *= d
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    total_bytes = 0
    params = 0
    weight_map: dict[str, str] = {}
    for k, group in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: make_tensor(name, shape, special, output_name) for name, shape in group}
        mx.eval(list(tensors.values()))
        mx.save_safetensors(str(out / fname), tensors, metadata={"format": "mlx"})
        for name, t in tensors.items():
            weight_map[name] = fname
            total_bytes += t.nbytes
            params += t.size
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    return {"path": str(out), "parameters": params, "weight_bytes": total_bytes, "shards": len(shards),
            "special_tokens_zeroed": special, "seconds": round(time.perf_counter() - t0, 2),
            "device": str(mx.default_device())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer-dir", type=Path, required=True,
                   help="SmolLM2's config.json and tokenizer files (prepare.sh writes .gpu/tok)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the model folders into")
    p.add_argument("--shape", default="smollm2,llama8b", help="comma-separated: smollm2, llama8b")
    p.add_argument("--layers", type=int, help="override the layer count (quick checks)")
    p.add_argument("--shard-gb", type=float, default=4.0, help="safetensors shard size in GB (default 4)")
    args = p.parse_args(argv)
    mx.random.seed(0)
    shapes = [s.strip() for s in args.shape.split(",") if s.strip()]
    unknown = sorted(set(shapes) - {"smollm2", "llama8b"})
    if unknown:
        p.error(f"unknown --shape {', '.join(unknown)} (choose smollm2, llama8b)")
    facts = {}
    for shape in shapes:
        config = smollm2_config(args.tokenizer_dir) if shape == "smollm2" else dict(LLAMA_8B)
        if args.layers is not None:
            config["num_hidden_layers"] = args.layers
        name = "smollm2-135m-bf16" if shape == "smollm2" else "llama3-8b-shape-bf16"
        facts[shape] = write_model(args.out / name, config, args.tokenizer_dir, int(args.shard_gb * 1e9))
        print(json.dumps({shape: facts[shape]}), flush=True)
    (args.out / "models.json").write_text(json.dumps(facts, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
