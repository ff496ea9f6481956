#!/usr/bin/env bash
# Issue 8's whole device check in one call (the device tool's `run`, with `carry: [".whl"]`):
# installs the carried wheels (docs/benchmarks.md says which), then runs
# benchmarks/gpu_throughput.py one build at a time, each in its own process under its own
# time cap (a case that hangs or fails costs its group, not the call), then the bf16 parity
# test. Every log goes under $OUT (it comes back even when the call runs past its limit);
# the RESULT lines are printed last.
#
#     bash benchmarks/gpu_run.sh               # on the GPU machine, from the repository root
#     MIN_SECONDS=3 bash benchmarks/gpu_run.sh # longer timing per batch size
set -u
OUT=${OUT:-$(mktemp -d)}
MIN_SECONDS=${MIN_SECONDS:-2}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:.
else
    export PYTHONPATH=.
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, transformers, pydantic; print('python', __import__('sys').version.split()[0],
'torch', torch.__version__, 'transformers', transformers.__version__,
'pydantic', pydantic.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"

# name  cap(s)  cases...
run_group() {
    local name=$1 cap=$2
    shift 2
    echo "== $name (at most ${cap} s): $*"
    timeout --kill-after=5 "$cap" python3 benchmarks/gpu_throughput.py --cases "$@" \
        --min-seconds "$MIN_SECONDS" 2>&1 | tee "$OUT/$name.log"
}
run_group owlv2_b16 ${CAP_B16:-100} owlv2-b16-960-q3 owlv2-b16-960-q300
run_group florence2 ${CAP_FLORENCE:-120} florence2
run_group qwen2 ${CAP_QWEN:-100} qwen2
run_group owlv2_l14 ${CAP_L14:-110} owlv2-l14-1008-q3 owlv2-l14-1008-q300
run_group tiled ${CAP_TILED:-50} tiled

echo "== bf16 parity"
timeout --kill-after=5 "${CAP_PARITY:-45}" python3 -m pytest -q -p no:cacheprovider \
    tests/gpu/test_bf16_parity.py 2>&1 | tee "$OUT/parity.log"

echo "== results"
grep -h "RESULT\|pipeline batch" "$OUT"/*.log
