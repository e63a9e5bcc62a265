#!/usr/bin/env bash
# What a session with a GPU runs, in one go (docs/benchmarks.md and docs/reproductions.md record
# what it printed): the GPU benchmarks, the trainer's precision and compile flags on the GPU, then
# the Fashion-MNIST suite at full scale with several steps sharing the GPU. Each part has its own
# time limit, so that a slow one cannot eat the others' time; the logs and the suite's results and
# report (checkpoints left out) go to OUT_DIR. The suite gets what is left of TOTAL_SECONDS, less
# the 40 s its report and archive take: what it has not finished by then is not in its report.
#
#   benchmarks/gpu_check.sh OUT_DIR [TOTAL_SECONDS]
#   DEVICE=cpu SUITE_ARGS="--scale 0.01" benchmarks/gpu_check.sh /tmp/check 900   # a dry run
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [TOTAL_SECONDS]}
total_seconds=${2:-540}
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
work=${WORK_DIR:-/tmp/gpu-check}
export PYTHONUNBUFFERED=1
mkdir -p "$out" "$work"

# One part: its name, its limit in seconds, its command; the exit status is printed, not fatal.
part() {
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T), limit ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@"
    echo "== $name: exit $?, $((SECONDS - start)) s"
}

# The trainer on 2 epochs of 25,600 images, PGD-7, whole process timed: fp32, bf16, compiled.
trainer_flags() {
    local common=(--device "$device" --epochs 2 --limit-train 25600 --attack-steps 7
        --channels-last --monitor-examples 0 --monitor-clean-examples 500 --no-tensorboard)
    for flags in "--precision fp32" "--precision bf16" "--precision bf16 --compile"; do
        local name=${flags//[ -]/}
        # shellcheck disable=SC2086
        part "train $flags" 90 "$python" -m advprune train --run-dir "$work/train-$name" \
            "${common[@]}" $flags
    done
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    "$python" -c "import torch, sys; print(sys.version.split()[0], torch.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    echo "cpu cores: $(nproc)"
} >"$out/env.txt" 2>&1

{
    part train_throughput 100 "$python" benchmarks/train_throughput.py --device "$device" \
        --resnet-batch-size 128 --resnet-steps 10 --lenet-steps 50
    part mad_saliency 80 "$python" benchmarks/mad_saliency.py --device "$device"
    part structured_speedup 60 "$python" benchmarks/structured_speedup.py --device "$device"
    trainer_flags
} >"$out/bench.log" 2>&1

# The suite: --jobs N with the device set, so that N steps share the one GPU (a LeNet leaves
# it idle between kernel launches). CW-∞ left out, as in the full-scale CPU run it is set beside;
# a row at chance is reported, not a stop (allow_chance), as in the three-seed CPU run.
suite_seconds=$((total_seconds - SECONDS - 40))
# shellcheck disable=SC2086
part suite "$suite_seconds" "$python" -m advprune reproduce fashion-mnist-suite \
    --jobs "${SUITE_JOBS:-8}" --set device="$device" --set attacks=clean,fgsm,pgd,autoattack \
    --set allow_chance=true \
    --runs-dir "$work/suite" ${SUITE_ARGS:-} >"$out/suite.log" 2>&1
[ -f "$work/suite/report/report.md" ] ||
    "$python" -m advprune report --out "$work/suite/report" "$work/suite" >>"$out/suite.log" 2>&1
tar czf "$out/suite.tar.gz" -C "$work" --exclude='*.safetensors' suite 2>>"$out/suite.log"
echo "done: $(ls "$out")"
