#!/usr/bin/env bash
# Issue 8's whole device check in one call (the device tool's `run`, with `carry: [".whl"]`):
# installs the carried wheels (docs/benchmarks.md says which), then runs groups of
# benchmarks/gpu_throughput.py cases (and option variants), each in its own process under its
# own time cap (a case that hangs or fails costs its group, not the call), and the bf16
# parity test. Every log goes under $OUT (it comes back even when the call runs past its limit);
# the RESULT lines are printed last.
#
#     bash benchmarks/gpu_run.sh                  # every group (about 15 minutes)
#     bash benchmarks/gpu_run.sh qwen2 parity     # the groups named, in that order
#     MIN_SECONDS=3 bash benchmarks/gpu_run.sh    # longer timing per batch size
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
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

# name  cap(s)  arguments of gpu_throughput.py
run_group() {
    local name=$1 cap=$2
    shift 2
    echo "== $name (at most ${cap} s; ${SECONDS} s into the call): $*"
    timeout --kill-after=5 "$cap" python3 benchmarks/gpu_throughput.py \
        --min-seconds "$MIN_SECONDS" "$@" 2>&1 | tee "$OUT/$name.log"
}

# Each group: a name, its cap in seconds, its arguments. Run the groups named on the command
# line, in that order, or all of them. A case's pipeline runs twice, with 1 and 2 batches at
# once (gpu_throughput.py --concurrent-batches), within its group's cap, unless its group
# says otherwise.
run() {
    case $1 in
    owlv2_b16) run_group "$1" 120 --cases owlv2-b16-960-q3 owlv2-b16-960-q300 ;;
    owlv2_b16_cudnn) run_group "$1" 40 --cases owlv2-b16-960-q3 --batch-sizes 64 128 \
        --sdpa cudnn ;;
    # One compile per batch size (model.compile: dynamic=False), so one size.
    owlv2_b16_compile) run_group "$1" 110 --cases owlv2-b16-960-q3 --batch-sizes 128 \
        --compile ;;
    owlv2_b16_compile_cudnn) run_group "$1" 90 --cases owlv2-b16-960-q3 --batch-sizes 128 \
        --compile --sdpa cudnn ;;
    # Generative cases sweep 32..512 (GENERATIVE_BATCH_SIZES); their pipeline runs one batch
    # at a time, their default (florence2_two_at_once measures two).
    florence2) run_group "$1" 200 --cases florence2 --concurrent-batches 1 ;;
    florence2_two_at_once) run_group "$1" 100 --cases florence2-base --batch-sizes 128 ;;
    # The vision tower compiled, and a static cache with the decoding step compiled: one
    # compile per batch and prompt shape; one batch at a time (the generative default).
    florence2_compile) run_group "$1" 240 --cases florence2-base --batch-sizes 256 \
        --compile --concurrent-batches 1 ;;
    qwen2) run_group "$1" 200 --cases qwen2 --concurrent-batches 1 ;;
    qwen2_compile) run_group "$1" 180 --cases qwen2 --batch-sizes 256 --compile \
        --concurrent-batches 1 ;;
    owlv2_l14) run_group "$1" 130 --cases owlv2-l14-1008-q3 owlv2-l14-1008-q300 ;;
    owlv2_l14_compile_cudnn) run_group "$1" 120 --cases owlv2-l14-1008-q3 --batch-sizes 64 \
        --compile --sdpa cudnn ;;
    tiled) run_group "$1" 50 --cases tiled ;;
    # Qwen2-VL's vision tower at batch 128: transformers' attention image by image against
    # ours by runs of equal-size images, then of square and 4:3 ones grouped by size
    # (benchmarks/qwen2_vl_vision.py).
    qwen2_vision)
        echo "== $1 (at most 90 s; ${SECONDS} s into the call)"
        { timeout --kill-after=5 45 python3 benchmarks/qwen2_vl_vision.py --full
          timeout --kill-after=5 45 python3 benchmarks/qwen2_vl_vision.py --full --mixed
        } 2>&1 | tee "$OUT/$1.log" ;;
    # Pixels copied to the GPU from where they are, not from pinned memory: what staging gains.
    owlv2_b16_unpinned) run_group "$1" 60 --cases owlv2-b16-960-q3 --batch-sizes 128 \
        --pinned no ;;
    tiled_unpinned) run_group "$1" 50 --cases tiled --batch-sizes 32 --pinned no ;;
    # One batch of 128 under torch.profiler (benchmarks/gpu_profile.py): the GPU's busy share
    # and the operations that take the time; Chrome traces under $OUT/traces, except
    # Qwen2-VL's (28 layers x 60 steps: on CPU its tiny model's 2 layers already made 1.4 MB).
    profile_qwen2|profile_florence2|profile_owlv2_b16)
        local cases=${1#profile_} trace=(--trace "$OUT/traces")
        [ "$cases" = owlv2_b16 ] && cases=owlv2-b16-960-q3
        [ "$cases" = florence2 ] && cases=florence2-base
        [ "$cases" = qwen2 ] && trace=()
        echo "== $1 (at most 150 s; ${SECONDS} s into the call)"
        timeout --kill-after=5 150 python3 benchmarks/gpu_profile.py --cases "$cases" \
            --batch 128 "${trace[@]}" 2>&1 | tee "$OUT/$1.log" ;;
    parity)
        echo "== bf16 parity"
        # No CUDA is then a failure, never "14 skipped".
        LABELER_REQUIRE_GPU=1 timeout --kill-after=5 150 \
            python3 -m pytest -q -p no:cacheprovider -m gpu \
            tests/gpu tests/models/test_device_preprocess.py 2>&1 | tee "$OUT/parity.log" ;;
    *) echo "unknown group $1" >&2; exit 2 ;;
    esac
}
GROUPS_RUN=("$@")
[ ${#GROUPS_RUN[@]} -gt 0 ] || GROUPS_RUN=(owlv2_b16 florence2 qwen2 owlv2_l14 tiled parity
                                         owlv2_b16_cudnn owlv2_b16_compile owlv2_b16_compile_cudnn
                                         florence2_compile qwen2_compile owlv2_l14_compile_cudnn
                                         owlv2_b16_unpinned tiled_unpinned
                                         florence2_two_at_once qwen2_vision profile_qwen2
                                         profile_florence2 profile_owlv2_b16)
for group in "${GROUPS_RUN[@]}"; do
    run "$group"
done

echo "== results"
grep -h "RESULT\|PROFILE\|pipeline batch\|passed\|failed" "$OUT"/*.log
