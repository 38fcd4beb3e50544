#!/usr/bin/env bash
# The GPU measurements, prepared for a session that is lent a GPU (the `device` tool): one command of a few minutes
# on that machine's own python3, which has torch, numpy, safetensors, tokenizers, transformers and rich (d3llm runs
# from the working tree, no install). Everything lands in $OUT (or benchmarks/results when $OUT is unset).
#
# Default: benchmarks/decode.py on the shipped teacher at batch 1, 8 and 32 and staggered, in fp32 (its dtype).
#
# REAL_SHAPE=llada-8b-instruct: a random-weight checkpoint of that named shape (`d3llm init`, bf16, into REAL_DIR,
# default /tmp/d3llm_<shape>; reused when present), every method at batch 1, 8 and 32 in bf16, each setting's
# batch-1 tokens saved; then, when REFERENCE_REPO names a checkout of hao-ai-lab/d3LLM (carried along, never
# committed), the reference's own decoding functions on the same checkpoint and prompts at batch 1
# (benchmarks/reference_decode.py, under REFERENCE_PYTHON, default python3): tokens/s side by side and whether the
# tokens are identical. Random weights rarely pass a confidence threshold, so every method commits about one
# token per step: the figures measure the cost of a step at the real shape, not the methods' TPF.
#
#   device run:  bash benchmarks/device_check.sh                                          (timeout_s 480)
#   device run:  REAL_SHAPE=llada-8b-instruct REFERENCE_REPO=.reference/d3LLM bash benchmarks/device_check.sh
#                                                                                          (timeout_s 600)
#   here, to try the script on the CPU:
#     DEVICE=cpu bash benchmarks/device_check.sh --gen 32 --prompts 4 --batches 1,2
#     DEVICE=cpu REAL_SHAPE=teacher REAL_DIR=d3llm/assets/arith-teacher REFERENCE_REPO=/tmp/d3llm-ref \
#         REFERENCE_PYTHON=/tmp/refenv/bin/python bash benchmarks/device_check.sh --gen 32 --prompts 4 --batches 1,2
#   (a trained model: on a random tiny one the reference's own generate can commit the mask id and run out of steps)
#
# Extra arguments go to decode.py after the defaults, so they override them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device="${DEVICE:-cuda}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python3 -c "import torch; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', ok, torch.cuda.get_device_name() if ok else '')"
shape="${REAL_SHAPE:-}"
if [ -z "$shape" ]; then
    python3 benchmarks/decode.py --device "$device" --gen 128 --prompts 32 --batches 1,8,32 --stagger-every 2 --markdown \
        --out "$out/decode_$device.json" "$@" 2>&1 | tee "$out/decode_$device.log"
    exit 0
fi
dir="${REAL_DIR:-/tmp/d3llm_$shape}"
if [ ! -f "$dir/config.json" ]; then
    python3 -m d3llm.cli.main init "$shape" --out "$dir"
fi
python3 benchmarks/decode.py --model "$dir" --device "$device" --dtype bfloat16 --gen 64 --block 32 --prompts 32 \
    --batches 1,8,32 --stagger-every 0 --no-ceiling --markdown --save-tokens "$out/tokens_${shape}_$device.json" \
    --out "$out/decode_${shape}_$device.json" "$@" 2>&1 | tee "$out/decode_${shape}_$device.log"
if [ -n "${REFERENCE_REPO:-}" ]; then
    "${REFERENCE_PYTHON:-python3}" benchmarks/reference_decode.py --reference-repo "$REFERENCE_REPO" --model "$dir" \
        --device "$device" --ours "$out/tokens_${shape}_$device.json" --out "$out/reference_${shape}_$device.json" \
        2>&1 | tee "$out/reference_${shape}_$device.log"
fi
