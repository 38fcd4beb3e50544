#!/usr/bin/env bash
# The GPU measurement of the batching issue, prepared for a session that is lent a GPU (the `device` tool): one
# command of a few minutes on that machine's own python3, which has torch, numpy, safetensors, tokenizers,
# transformers and rich (d3llm runs from the working tree, no install). It runs benchmarks/decode.py on the shipped
# teacher at batch 1, 8 and 32 and staggered, in fp32 (the teacher's dtype), and leaves the table, the
# JSON and the log in $OUT (or benchmarks/results when $OUT is unset).
#
#   device run:  bash benchmarks/device_check.sh                 (timeout_s 480)
#   here, to try the script itself on the CPU:  DEVICE=cpu bash benchmarks/device_check.sh --gen 32 --prompts 4 --batches 1,2
#
# Extra arguments go to decode.py after the defaults, so they override them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device="${DEVICE:-cuda}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python3 -c "import torch; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', ok, torch.cuda.get_device_name() if ok else '')"
python3 benchmarks/decode.py --device "$device" --gen 128 --prompts 32 --batches 1,8,32 --stagger-every 2 --markdown \
    --out "$out/decode_$device.json" "$@" 2>&1 | tee "$out/decode_$device.log"
