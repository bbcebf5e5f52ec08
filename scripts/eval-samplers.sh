#!/usr/bin/env bash
# Quality per model call: `trainer eval` of the shipped MNIST model with DDIM at 10, 20 and 50
# steps and DPM-Solver++ (2M, linspace timesteps and Karras noise levels) at 8, 10, 15 and 20
# steps, all at w = 3 with the same n, seed and classes. One run per setting under
# runs/eval-samplers/n<N>-seed<S>/<setting>/ (a setting whose eval.json exists is skipped, so the
# script resumes), then `trainer eval-compare` tabulates and plots them (FID against model
# calls) into docs/samplers-mnist-n<N>-seed<S>/.
#
# Usage: scripts/eval-samplers.sh [n, default 500] [seed, default 0] [settings…]
#   settings: SAMPLER:STEPS with SAMPLER one of ddim, dpmsolver++, dpmsolver++-karras
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
N="${1:-500}"
SEED="${2:-0}"
shift $(( $# < 2 ? $# : 2 ))
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(ddim:10 ddim:20 ddim:50 dpmsolver++:8 dpmsolver++:10
  dpmsolver++:15 dpmsolver++:20 dpmsolver++-karras:8 dpmsolver++-karras:10 dpmsolver++-karras:15
  dpmsolver++-karras:20)
cargo build --release -p trainer
T="$CARGO_TARGET_DIR/release/trainer"
OUT="runs/eval-samplers/n$N-seed$SEED"
reports=()
for s in "${SETTINGS[@]}"; do
  name="${s%%:*}" steps="${s##*:}"
  case "$name" in
    dpmsolver++-karras) flags=(--sampler dpmsolver++ --karras-sigmas) ;;
    *) flags=(--sampler "$name") ;;
  esac
  dir="$OUT/$name-$steps"
  reports+=("$dir/eval.json")
  if [ -f "$dir/eval.json" ]; then echo "have $dir"; continue; fi
  "$T" eval --weights weights/mnist.safetensors --dataset mnist10k --n "$N" --seed "$SEED" \
    --guidance 3 "${flags[@]}" --steps "$steps" --out "$dir"
done
"$T" eval-compare --out "docs/samplers-mnist-n$N-seed$SEED" "${reports[@]}"
