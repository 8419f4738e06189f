#!/usr/bin/env bash
# The whole GPU check, for a CUDA machine lent for a few minutes: the engine's tests on CUDA (graph replay per KV
# slot, the Triton kernels in each variant, bf16 against float32), bench/engine.py's decode report (the decode
# step's variants with kernel profiles, each weight's GEMV alone), the keystroke replay through the real server
# with the 1.6B shape (with the default decode: fused GEMVs, PDL, the host a step behind the GPU; then with the
# host in lockstep, the baseline),
# and the GPU report (bf16 drift, decode ms/token, transformers' generate).
#
#     bash bench/gpu.sh [WHEEL_DIR] [STEP ...]     # STEP: tests decode keystrokes keystrokes-baseline gpu
#
# All steps may take more than the 10 minutes a device command may run (each new Triton kernel and GEMV tile
# compiles, about a second each), so run them in two calls:
#     bash bench/gpu.sh .whl tests decode
#     bash bench/gpu.sh .whl keystrokes keystrokes-baseline gpu
#
# The machine needs torch with CUDA, transformers, tokenizers, safetensors, pytest; WHEEL_DIR holds
# wheels of what it lacks (pygls, lsprotocol, cattrs, attrs, pytest-asyncio, pytest-lsp), installed
# into a scratch folder without network. Logs go to $OUT (default: gpu-logs/); the summaries are printed.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
site=$(mktemp -d)
if [ -n "${1:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$1"/*.whl || exit 1
fi
shift || true
steps=" ${*:-tests decode keystrokes keystrokes-baseline gpu} "
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
keystrokes="bench/keystrokes.py --device cuda --dtype bfloat16 --shape real --context 2048 --max-new-tokens 16 --single-line"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} >"$out/device.txt" 2>&1
cat "$out/device.txt"

if [[ $steps == *" tests "* ]]; then
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/engine >"$out/pytest_engine.log" 2>&1
    echo "tests/engine on this machine: rc=$? ($(tail -1 "$out/pytest_engine.log"))"
    grep -E "^(FAILED|ERROR)" "$out/pytest_engine.log" | cut -c1-240
fi
if [[ $steps == *" decode "* ]]; then
    timeout 300 python3 bench/engine.py --report decode --profile >"$out/engine_decode.log" 2>&1
    echo "bench/engine.py --report decode: rc=$?"
    grep -A40 "== summary" "$out/engine_decode.log" | grep -v "^ - decode step" | cut -c1-240
fi
if [[ $steps == *" keystrokes "* ]]; then
    timeout 200 python3 $keystrokes >"$out/keystrokes_gpu.log" 2>&1
    echo "bench/keystrokes.py: rc=$?"
    grep -A12 "== summary" "$out/keystrokes_gpu.log" | cut -c1-240
fi
if [[ $steps == *" keystrokes-baseline "* ]]; then
    # the same replay with the host in lockstep with the GPU (the default before the run-ahead loop)
    timeout 200 python3 $keystrokes --sections replay --no-hf --decode-constants RUN_AHEAD=False \
        >"$out/keystrokes_gpu_baseline.log" 2>&1
    echo "bench/keystrokes.py --decode-constants RUN_AHEAD=False: rc=$?"
    grep -A12 "== summary" "$out/keystrokes_gpu_baseline.log" | cut -c1-240
fi
if [[ $steps == *" gpu "* ]]; then
    timeout 200 python3 bench/engine.py --report gpu >"$out/engine_gpu.log" 2>&1
    echo "bench/engine.py --report gpu: rc=$?"
    grep -A30 "== summary" "$out/engine_gpu.log" | cut -c1-240
fi
