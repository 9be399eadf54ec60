#!/usr/bin/env bash
# What each call on the lent GPU machine runs (in the repo root of the carried tree; $OUT comes back).
# prepare.sh must have written .gpu/ here first. A fresh machine takes two calls:
#   call 1: carry [".gpu/a"]                          command: bash .gpu/a/stage.sh
#   call 2: carry [".gpu/b",".gpu/tok",".gpu/proj"]   command: bash tests/bench/gpu/run_device.sh setup [STEP...]
# and later calls on the same warm machine (it keeps its disk for 30 s after each call):
#           carry [".gpu/proj"]                       command: bash tests/bench/gpu/run_device.sh STEP [STEP...]
# Steps:
#   setup         install the carried wheels and mlxserve; write the random-weight models to $MODELS
#   smoke         tests/bench/gpu/smoke.py on the SmolLM2-shaped model (mlxserve on the GPU, one request)
#   serving-small tests/bench/bench_serving.py on the SmolLM2-shaped model (first baseline)
#   serving-8b    the same on the Llama-8B-shaped model, shorter
#   warm-small / warm-8b     fill MLX's kernel cache first (see step_warm)
#   suite-small / suite-8b   tests/bench/bench_suite.py on either model ($SUITE_ARGS replaces the defaults)
#   profile-small py-spy of the mlxserve worker and gateway while they stream (SmolLM2-shaped model)
#   engine-gap    tests/bench/gpu/engine_gap.py: batch-1 decode, stream_generate vs BatchGenerator and between
#   engine-batch-new / engine-batch-base   tests/bench/gpu/engine_batch.py at 1, 8, 32 streams, with the
#                 carried tree's ModelRunner / HEAD's (.gpu/base/head.tar.gz: prepare.sh writes it)
#   profile-engine-new / profile-engine-base   py-spy (raw stacks) of engine_batch.py's runner at 32 streams, 8B shape
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
MODELS=${MODELS:-/root/models}
SMALL=$MODELS/smollm2-135m-bf16
BIG=$MODELS/llama3-8b-shape-bf16
BW=${BANDWIDTH_GBS:-3350}
mkdir -p "$OUT"
log() { echo "== $(date +%H:%M:%S) $*"; }

ensure_project() {
  # The carried tree may sit at a new path on each call: (re)install it editable, or the wheel.
  if ! python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile -e . >"$OUT/pip-e.log" 2>&1; then
    log "editable install failed ($(tail -1 "$OUT/pip-e.log")); installing .gpu/proj wheel"
    python3 -m pip install -q --no-index --no-deps --no-compile --force-reinstall .gpu/proj/*.whl || return 1
  fi
  python3 -c "import mlxserve, mlx.core as mx; from mlxserve.v1 import store_pb2_grpc; print('mlxserve ok, mlx', mx.__version__, mx.default_device())"
}

versions() {
  {
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
    python3 -m pip list 2>/dev/null | grep -iE '^(mlx|mlx-cuda-13|mlx-lm|mlxserve|grpcio|protobuf|aiohttp|pyzmq|transformers|tokenizers|numpy) '
    python3 --version; nproc; free -g | head -2
  } > "$OUT/machine.txt" 2>&1
  cat "$OUT/machine.txt"
}

step_setup() {
  log setup
  bash .gpu/b/install.sh || return 1
  python3 -m pip install -q --no-index --no-deps --no-compile .gpu/b/extra/*.whl || return 1
  python3 -c 'import pydantic, typer, zmq, msgspec, structlog, grpc, google.protobuf as p; print("deps ok, protobuf", p.__version__)' || return 1
  ensure_project || return 1
  versions
  if [ ! -f "$MODELS/models.json" ]; then
    python3 tests/bench/gpu/make_models.py --tokenizer-dir .gpu/tok --out "$MODELS" --shape "${SHAPES:-smollm2,llama8b}" || return 1
  fi
  cp "$MODELS/models.json" "$OUT/models.json"
}

step_smoke() { log smoke; python3 tests/bench/gpu/smoke.py "$SMALL" --json "$OUT/smoke.json"; }

step_serving_small() {
  log serving-small
  timeout 300 python3 tests/bench/bench_serving.py --model smollm2-bf16 --model-path "$SMALL" --api openai \
    --num-predict 128 --runs 3 --concurrency 1,4,16,32 --turns 8 --json "$OUT/gpu-serving-smollm2.json"
}

step_serving_8b() {
  log serving-8b
  timeout 400 python3 tests/bench/bench_serving.py --model llama8b-bf16 --model-path "$BIG" --api openai \
    --num-predict 64 --runs 2 --concurrency 1,8,32 --turns 8 --json "$OUT/gpu-serving-llama8b.json"
}

# The suite as /tmp/i9/SUITE_READY gives it (tests/bench/bench_suite.py), JSON and log into $OUT.
SUITE_ARGS_DEFAULT="--num-predict 128 --runs 2 --repeats 3 --concurrency 1,8,16,32 --turns 0 --cold-runs 0 --markdown"
step_suite() {  # $1: small|8b
  local path name
  if [ "$1" = small ]; then path=$SMALL; name=smollm2; else path=$BIG; name=llama8b; fi
  local args="--model-path $path --name $name --bandwidth-gbs $BW ${SUITE_ARGS:-$SUITE_ARGS_DEFAULT}"
  log "suite $1: python3 tests/bench/bench_suite.py $args --json \$OUT/gpu-$name.json"
  # shellcheck disable=SC2086
  timeout "${SUITE_TIMEOUT:-570}" python3 tests/bench/bench_suite.py $args --json "$OUT/gpu-$name.json" 2>&1 \
    | tee "$OUT/gpu-$name.log"
}

# MLX's CUDA backend compiles kernels at first use (NVRTC) into /tmp/mlx/<version>/ptx, shared by
# every process on the machine. The suite starts mlxserve first, so without a warm-up it would pay
# the compiles (seconds per new batch shape) inside its timed runs and the later sides would not.
# A tiny pass over every side and batch size fills the cache first; CUDA graphs are still captured
# per process, as in real serving.
step_warm() {  # $1: small|8b
  log "warm $1"
  if [ "$1" = small ]; then  # every side once (the worker's own sampling path too), tiny workload
    timeout 240 python3 tests/bench/bench_suite.py --model-path "$SMALL" --name warm --num-predict 8 --runs 1 --repeats 1 \
      --concurrency "${WARM_LEVELS:-1,8,16,32}" --turns 2 --cold-runs 0 > "$OUT/warm-small.log" 2>&1
  else  # same vocabulary as the small model, so only the transformer's shapes are new: the engine alone
    timeout 240 python3 tests/bench/gpu/warm_kernels.py "$BIG" --levels "${WARM_LEVELS:-1,8,16,32}" > "$OUT/warm-8b.log" 2>&1
  fi || { log "warm $1 failed:"; tail -30 "$OUT/warm-$1.log"; return 1; }
  tail -8 "$OUT/warm-$1.log"; du -sh /tmp/mlx 2>/dev/null
}

step_engine_gap() {
  log engine-gap
  local lay
  lay=$(tree_for new) || return 1
  PYTHONPATH=$lay timeout 300 python3 tests/bench/gpu/engine_gap.py "$SMALL" "$BIG" --json "$OUT/gpu-engine-gap.json"
}

# A folder from which `mlxserve` imports the tree at $2 (PYTHONPATH=$1), as the editable install maps it.
layout() {
  rm -rf "$1" && mkdir -p "$1" && cp -r "$2/protos/mlxserve" "$1/mlxserve" || return 1
  for d in services gateway cli deploy; do ln -s "$(cd "$2" && pwd)/$d" "$1/mlxserve/$d"; done
}

tree_for() {  # $1: new|base -> prints the layout folder
  if [ "$1" = base ]; then
    [ -d /tmp/base-src ] || { mkdir -p /tmp/base-src && tar xzf .gpu/base/head.tar.gz -C /tmp/base-src; }
    layout /tmp/lay-base /tmp/base-src && echo /tmp/lay-base
  else
    layout /tmp/lay-new . && echo /tmp/lay-new
  fi
}

step_engine_batch() {  # $1: new|base
  local lay sides="stream_generate,bg_shared,bg_per_row,runner,runner_greedy"
  lay=$(tree_for "$1") || return 1
  [ "$1" = base ] && sides="runner,runner_greedy"
  sides=${BATCH_SIDES:-$sides}
  log "engine-batch $1: PYTHONPATH=$lay python3 tests/bench/gpu/engine_batch.py $SMALL $BIG --sides $sides"
  # shellcheck disable=SC2086  # BATCH_MODELS / BATCH_ARGS (e.g. "--levels 1 --runs 5") narrow a rerun
  PYTHONPATH=$lay timeout "${BATCH_TIMEOUT:-290}" python3 tests/bench/gpu/engine_batch.py ${BATCH_MODELS:-$SMALL $BIG} --sides "$sides" \
    --label "$1" --json "$OUT/gpu-engine-batch-$1${BATCH_TAG:-}.json" ${BATCH_ARGS:-} 2>&1 | grep -v '\[info ' | tee "$OUT/engine-batch-$1${BATCH_TAG:-}.log"
}

step_profile_engine() {  # $1: new|base
  local lay
  lay=$(tree_for "$1") || return 1
  log "profile-engine $1"
  PYTHONPATH=$lay timeout 150 py-spy record --rate 200 --format raw -o "$OUT/pyspy-engine-$1.txt" -- \
    python3 tests/bench/gpu/engine_batch.py "$BIG" --levels 32 --sides runner --runs 2 2>&1 | grep -v '\[info ' | tail -5
}

step_profile_small() {
  log profile-small
  PYSPY_OUT="$OUT" timeout 240 python3 tests/bench/gpu/profile_worker.py "$SMALL" --out "$OUT"
}

status=0
first=1
for step in "$@"; do
  if [ "$step" != setup ] && [ $first = 1 ]; then ensure_project || exit 1; fi
  first=0
  case $step in
    setup) step_setup || { log "setup failed"; exit 1; } ;;
    smoke) step_smoke || status=1 ;;
    serving-small) step_serving_small || status=1 ;;
    serving-8b) step_serving_8b || status=1 ;;
    suite-small) step_suite small || status=1 ;;
    suite-8b) step_suite 8b || status=1 ;;
    warm-small) step_warm small || status=1 ;;
    warm-8b) step_warm 8b || status=1 ;;
    profile-small) step_profile_small || status=1 ;;
    engine-gap) step_engine_gap || status=1 ;;
    engine-batch-new) step_engine_batch new || status=1 ;;
    engine-batch-base) step_engine_batch base || status=1 ;;
    profile-engine-new) step_profile_engine new || status=1 ;;
    profile-engine-base) step_profile_engine base || status=1 ;;
    *) log "unknown step $step"; status=1 ;;
  esac
done
exit $status
