#!/usr/bin/env bash
# Quality per model call: `trainer eval` of the shipped MNIST model with DPM-Solver++ at 8, 10,
# 15 and 20 steps and DDIM at 10, 20 and 50 steps, all at w = 3, the same n, seed and classes.
# One run per setting under runs/eval-samplers/<sampler>-<steps>/ (a setting whose eval.json
# exists is skipped, so the script resumes), then `trainer eval-compare` tabulates and plots
# them (FID against model calls) into docs/.
#
# Usage: scripts/eval-samplers.sh [n, default 500]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
N="${1:-500}"
cargo build --release -p trainer
T="$CARGO_TARGET_DIR/release/trainer"
OUT=runs/eval-samplers
SETTINGS="ddim:50 dpmsolver++:15 dpmsolver++:10 dpmsolver++:20 dpmsolver++:8 ddim:20 ddim:10"
for s in $SETTINGS; do
  sampler="${s%%:*}" steps="${s##*:}"
  dir="$OUT/n$N/$sampler-$steps"
  if [ -f "$dir/eval.json" ]; then echo "have $dir"; continue; fi
  "$T" eval --weights weights/mnist.safetensors --dataset mnist10k --n "$N" --guidance 3 \
    --sampler "$sampler" --steps "$steps" --out "$dir"
done
reports=()
for s in $SETTINGS; do reports+=("$OUT/n$N/${s%%:*}-${s##*:}/eval.json"); done
"$T" eval-compare --out "docs/samplers-mnist-n$N" "${reports[@]}"
