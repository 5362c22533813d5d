#!/usr/bin/env bash
# One prepared GPU check for issue 13: every figure and log lands under OUT, stage by stage.
#
#   bash benchmarks/gpu_check.sh OUT              # on one GPU, <= 8 minutes in all
#   bash benchmarks/gpu_check.sh OUT --cpu-dry-run  # the same stages at toy sizes on CPU (plumbing only)
#
# Run from anywhere; it works in the repository root with PYTHONPATH = repo + repo/.gpu-deps
# (pyautoattack / foolbox / eagerpy unzipped there where the machine has no internet).
# Every stage runs under its own time limit and the global budget (GPU_CHECK_BUDGET_S, default
# 470 s), writes OUT/<stage>.log and its JSON as it goes, and a failing or killed stage does not
# stop the next. OUT/stages.tsv records exit code and seconds per stage; the last step prints
# the summary table (figure, goal, ratio, met?) and writes OUT/summary.md.
set -u
OUT=${1:?usage: gpu_check.sh OUT [--cpu-dry-run]}
MODE=${2:-gpu}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 2
export PYTHONPATH="$REPO:$REPO/.gpu-deps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
START=$(date +%s)
printf 'stage\trc\tseconds\n' > "$OUT/stages.tsv"

stage() {  # stage NAME LIMIT_S CMD...: run CMD with min(LIMIT, budget left), log to OUT/NAME.log
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  (( limit > left )) && limit=$left
  if (( limit < 5 )); then
    echo "== $name: skipped, budget spent" | tee -a "$OUT/progress.log"
    printf '%s\t%s\t%s\n' "$name" 125 0 >> "$OUT/stages.tsv"
    return
  fi
  echo "== $name (limit ${limit} s): $*" | tee -a "$OUT/progress.log"
  local t0=$(date +%s%N)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%s\t%s\t%d.%d\n' "$name" "$rc" $((ms / 1000)) $(((ms % 1000) / 100)) >> "$OUT/stages.tsv"
  echo "   $name: exit $rc in $((ms / 1000)) s; last line: $(tail -n 1 "$OUT/$name.log")" | tee -a "$OUT/progress.log"
}

MNIST=""
for d in "$REPO/shared/data" "$REPO/../shared/data"; do
  if [ -d "$d/MNIST" ]; then MNIST=$(cd "$d" && pwd); break; fi
done
echo "MNIST data: ${MNIST:-NOT FOUND in shared/data or ../shared/data}" | tee "$OUT/progress.log"

if [ "$MODE" = "--cpu-dry-run" ]; then  # toy sizes, limits x6: proves the plumbing on a slow shared CPU
  DEV=cpu; TH=2; SCALE=6; BUDGET=${GPU_CHECK_BUDGET_S:-3000}
  FAKE=(--n-train 400 --n-test 100)
  TRAIN=(--dataset digits --max-train 256)
  SWEEP=(--temps 1,20 --epochs 1 --max-train 128 --eval-n 10 --audit-n 5 --jobs 2)
  COMPARE=(--dataset digits --temps 1,20 --epochs 1 --max-train 128 --eval-n 10 --jobs 2 --compare-jobs 1 --no-audit)
  TP=(--arch small-cnn --seconds 0.2 --rounds 1)
  TP_METHODS=(--methods natural,trades)
  SMOKE=(--tiny --smoke-steps 1 --audit-n 5 --square-queries 10 --jobs 2)
else
  DEV=cuda; TH=4; SCALE=1
  FAKE=(--n-train 26000 --n-test 1000)
  TRAIN=(--dataset mnist --data-dir "$MNIST" --max-train 2048)
  SWEEP=(--temps 1,2,5,10,15,20 --audit-n 500 --jobs 6)
  COMPARE=(--dataset mnist --data-dir "$MNIST" --temps 1,20 --epochs 1 --jobs 6 --compare-jobs 1 --no-audit)
  TP=(--arch wrn-34-10 --seconds 1.5 --rounds 3)
  TP_METHODS=(--methods natural,trades,ltd,dd)
  SMOKE=(--smoke-steps 100 --audit-n 100 --square-queries 500 --jobs 4)
fi
DEPS='import importlib, sys, torch
print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
for m in ("pyautoattack", "foolbox", "eagerpy", "torchvision", "numpy", "scipy", "sklearn", "typer", "safetensors", "jinja2", "tqdm", "matplotlib"):
    try: print(m, getattr(importlib.import_module(m), "__version__", "ok"))
    except Exception as e: print(m, "MISSING", type(e).__name__, e)'

stage env 20 bash -c "nvidia-smi; nproc; free -g; $PY -c '$DEPS'"
stage fake_cifar 40 $PY benchmarks/make_fake_cifar10.py "$OUT/data" "${FAKE[@]}"
# issue 13 item 1: `train --device cuda` (no index) must work; the CLI as a user runs it
stage train_cli 40 $PY -m maskcheck train --method natural "${TRAIN[@]}" --device $DEV --epochs 1 --out "$OUT/train-cli" --no-progress
# the sweep is kept (JSON only, weights removed below): its audits re-render reports/mnist with the current verdicts
stage mnist_sweep 150 $PY benchmarks/sweep_speed.py --dataset mnist --data-dir "$MNIST" --device $DEV --threads $TH "${SWEEP[@]}" --json "$OUT/mnist_sweep.json" --out "$OUT/mnist-sweep"
stage throughput 50 $PY benchmarks/train_throughput.py --dataset cifar10 --data-dir "$OUT/data" --device $DEV --threads $TH "${TP[@]}" "${TP_METHODS[@]}" --json "$OUT/throughput.json"
stage smoke 200 $PY experiments/cifar10-paper/run.py --smoke --device $DEV --data-dir "$OUT/data" --out "$OUT/smoke" "${SMOKE[@]}"
stage jobs_compare 60 $PY benchmarks/sweep_speed.py --device $DEV --threads $TH "${COMPARE[@]}" --json "$OUT/jobs_compare.json"
# last: compiling WRN-34-10 takes a minute or more; it gets what the budget has left
stage compile 90 $PY benchmarks/train_throughput.py --dataset cifar10 --data-dir "$OUT/data" --device $DEV --threads $TH "${TP[@]}" --methods natural --compile --json "$OUT/compile.json"
rm -rf "$OUT/data" "$OUT/train-cli/model.safetensors" "$OUT/smoke/runs"/*/model.safetensors "$OUT/mnist-sweep/runs"/*/model.safetensors 2>/dev/null  # regenerable and large; JSON, logs and report stay
echo "== total $(( $(date +%s) - START )) s" | tee -a "$OUT/progress.log"
$PY benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
