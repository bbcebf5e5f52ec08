#!/usr/bin/env bash
# Regenerates the native golden samples the browser tests compare against:
# tests/golden/case-<class>-w<guidance>-s<seed>.npy (values in [-1, 1], shape [1, 1, 28, 28])
# from the shipped weights, and the schedule table (for exact ᾱ comparisons).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rust-ddpm/target}"
cargo test --release --workspace --no-run  # the same feature set as the tests: no rebuild
T="$CARGO_TARGET_DIR/release/trainer"
W=weights/mnist.safetensors
out=tests/golden
# class guidance seed steps
while read -r class guidance seed steps; do
  name="case-$class-w$guidance-s$seed-n$steps"
  "$T" sample --weights "$W" --class "$class" --guidance "$guidance" --seed "$seed" --steps "$steps" \
    --num 1 --scale 1 --pad 0 --out "$out/$name.png" --npy "$out/$name.npy"
done <<'CASES'
3 3 0 20
7 1 42 20
none 0 7 20
5 3 123 50
CASES
"$T" schedule --schedule linear --timesteps 1000 --csv "$out/schedule-linear-1000.csv"
