#!/usr/bin/env bash
# Regenerates the native golden samples the browser tests compare against, one per case of
# tests/golden/cases.json (the one list, also read by web/build.rs, crates/diffusion/tests/golden.rs
# and tests/e2e/*.mjs): tests/golden/<name>.npy (values in [-1, 1], shape [n, 1, 28, 28], the
# case's whole batch) and its grid as .png, and the schedule table (for exact ᾱ comparisons).
set -euo pipefail
cd "$(dirname "$0")/.."
# One target dir for `cargo run`, the scripts and the tests: ./target unless set (CI sets its cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo test --release --workspace --no-run  # the same feature set as the tests: no rebuild
T="$CARGO_TARGET_DIR/release/trainer"
out=tests/golden
W=$(python3 -c 'import json; print(json.load(open("tests/golden/cases.json"))["weights"])')
python3 -c '
import json
for c in json.load(open("tests/golden/cases.json"))["cases"]:
    print(c["name"], "none" if c["class"] is None else c["class"], c["num"], "%g" % c["guidance"], c["seed"], c["sampler"], int(c["karras_sigmas"]), c["steps"])
' | while read -r name class num guidance seed sampler karras steps; do
  flag=(); [ "$karras" = 1 ] && flag=(--karras-sigmas)
  "$T" sample --weights "$W" --class "$class" --guidance "$guidance" --seed "$seed" --sampler "$sampler" "${flag[@]}" --steps "$steps" \
    --num "$num" --scale 1 --pad 0 --out "$out/$name.png" --npy "$out/$name.npy"
done
"$T" schedule --schedule linear --timesteps 1000 --csv "$out/schedule-linear-1000.csv"
# A model imported from diffusers (RGB, 8×8, TensorFlow-style downsampling padding, f16), whose
# samples the browser tests compare too; trainer/tests/cli.rs checks that a fresh import and
# sample give these very bytes.
"$T" import-diffusers crates/diffusers-format/tests/data/google-style --f16 \
  --out "$out/imported/google-style.safetensors"
"$T" sample --weights "$out/imported/google-style.safetensors" --num 4 --sampler ddim --steps 10 \
  --seed 3 --scale 4 --pad 0 --out "$out/imported/google-style-ddim-s3-n4.png" \
  --npy "$out/imported/google-style-ddim-s3-n4.npy"
