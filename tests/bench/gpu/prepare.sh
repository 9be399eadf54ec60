#!/usr/bin/env bash
# Prepare everything the lent GPU machine needs for the benchmarks (it has no package registry).
#
#   bash tests/bench/gpu/prepare.sh          # here, in the repo root; writes the git-ignored .gpu/
#
# Writes:
#   .gpu/a      call 1 carries it: half of mlx-cuda-13, mlx, mlx-lm, grpcio (../shared/tools/gpu-wheels)
#   .gpu/b      call 2 carries it: the other half, install.sh, and extra/ (the rest of mlxserve's
#               runtime dependencies, pinned to this venv's versions, plus py-spy)
#   .gpu/tok    SmolLM2-135M's config.json and tokenizer files, from the store's import of the GGUF
#               (make_models.py writes the random-weight models from them on the device)
#   .gpu/proj   a wheel of mlxserve itself (fallback when the device cannot install the tree editable)
#   .gpu/base   HEAD's tree as a tarball (the "before" side of engine-batch-base)
# Then on the device (tests/bench/gpu/run_device.sh says what each call does):
#   call 1: carry [".gpu/a"]                     command: bash .gpu/a/stage.sh
#   call 2: carry [".gpu/b",".gpu/tok",".gpu/proj"] command: bash tests/bench/gpu/run_device.sh setup ...
#
# The machine's python3 (3.12, /opt/torch/.venv) already has numpy, transformers, jinja2,
# safetensors, sentencepiece, tokenizers, pyyaml and an unknown-version aiohttp/grpcio/protobuf/
# typer/rich; we carry our pinned versions of those our code depends on closely: grpcio and
# protobuf (the stubs check both versions at import: grpcio>=1.85.1, protobuf>=7.35), and the
# aiohttp, typer/click/rich, prometheus stacks (typer 0.29 needs pydantic, which the machine
# lacks). llguidance is not carried: no cp312 manylinux wheel of 1.9.1 matches, and the worker
# imports it only for structured outputs, which no benchmark uses.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
py=${PYTHON:-/work/venv/bin/python}

# Pinned to this venv's versions (pip list here), so the GPU runs the code that the CPU runs.
carry_a="grpcio==1.85.3"
carry_b="protobuf==7.36.2 pyzmq==27.3.0 msgspec==0.22.0 structlog==26.1.0 typer==0.29.2 click==8.5.1
  rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 shellingham==1.5.4 annotated-doc==0.0.7
  prometheus-client==0.26.0 aiohttp==3.14.5 aiosignal==1.4.0 aiohappyeyeballs==2.7.1 attrs==26.1.0
  frozenlist==1.8.0 multidict==7.2.1 propcache==0.5.4 yarl==1.25.1 typing-extensions==4.16.0 py-spy==0.4.3
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  gguf==0.19.0 pyyaml==6.0.4 requests==2.34.2 tqdm==4.70.1 urllib3==2.8.0 idna==3.21 certifi==2026.10.19.post1 charset-normalizer==3.5.3"

# 1. MLX (CUDA) wheels in two halves; grpcio rides in .gpu/a to balance the two calls' sizes.
EXTRA="$carry_a" bash ../shared/tools/gpu-wheels >/dev/null 2> >(grep -v "^WARNING: Location" >&2)

# 2. The rest, into .gpu/b/extra (installed by run_device.sh after .gpu/b/install.sh).
mkdir -p .gpu/b/extra
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
  -d .gpu/b/extra $carry_b 2> >(grep -v "^WARNING: Location" >&2)

# 3. SmolLM2's config and tokenizer, as the store imports them from the GGUF.
rm -rf .gpu/tok && mkdir -p .gpu/tok
"$py" - <<'PY'
import shutil, tempfile
from pathlib import Path
from mlxserve.services.store.store import ModelStore
from tests.fixtures.smollm2 import find_smollm2_gguf

with tempfile.TemporaryDirectory(prefix="mlxserve-gpu-prep-") as home:
    store = ModelStore(Path(home) / "models")
    store.create_from_path("smollm2", find_smollm2_gguf())
    view = store.resolve("smollm2").view_path
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json", "LICENSE"):
        if (view / name).is_file():
            shutil.copyfile(view / name, Path(".gpu/tok") / name)
PY

# 4. mlxserve itself as a wheel (the device prefers an editable install of the carried tree).
rm -rf .gpu/proj && mkdir -p .gpu/proj
"$py" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/proj . >/dev/null

# 5. HEAD's tree, for before/after runs of the worker's engine (run_device.sh engine-batch-base).
rm -rf .gpu/base && mkdir -p .gpu/base
git archive HEAD protos services gateway cli deploy | gzip > .gpu/base/head.tar.gz
git rev-parse HEAD > .gpu/base/HEAD

du -sh .gpu/a .gpu/b .gpu/tok .gpu/proj .gpu/base
echo "tree that travels: $(git ls-files -co --exclude-standard -z | du -ch --files0-from=- 2>/dev/null | tail -1)"
