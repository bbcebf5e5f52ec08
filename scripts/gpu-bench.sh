#!/usr/bin/env bash
# GPU benchmark of issue 7: the `cifar10_ddpm` training step at batch 128, ours (Burn's CUDA
# backend) beside PyTorch eager (fp32 and bf16 autocast) on the same GPU, as img/s.
#
# Usage: scripts/gpu-bench.sh [--batch 128] [--quick] [--skip-build] [--python PY]
#
# Building needs `--features cuda`, whose `cubecl-llvm` build step downloads tracel's LLVM 23.1
# bundle: build where that download works (or bring the built `bench` binary along and pass
# --skip-build with CARGO_TARGET_DIR pointing at it). PyTorch comes from PY (default python3)
# and needs a CUDA build of torch. Results: runs/bench/gpu-ours.json, runs/bench/gpu-pytorch.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# One target dir for `cargo run`, the scripts and the tests: ./target unless set (CI sets its cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

batch=128 quick=() build=1 python=python3
while [ $# -gt 0 ]; do
    case "$1" in
        --batch) batch="${2:?--batch needs a value}"; shift 2 ;;
        --quick) quick=(--quick); shift ;;
        --skip-build) build=0; shift ;;
        --python) python="${2:?--python needs a value}"; shift 2 ;;
        *) echo "error: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
    esac
done
case "$batch" in '' | *[!0-9]* | 0) echo "error: --batch must be a positive integer, got '$batch'" >&2; exit 2 ;; esac

if [ "$build" = 1 ]; then
    cargo build --release -p bench --features cuda
fi
exe="$CARGO_TARGET_DIR/release/bench"
[ -x "$exe" ] || { echo "error: $exe not found; build it with --features cuda first" >&2; exit 1; }
mkdir -p runs/bench
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$exe" --device cuda --sections cifar-train --cifar-train-batch "$batch" "${quick[@]}" \
    --out runs/bench/gpu-ours.json
"$python" scripts/bench-gpu-pytorch.py --device cuda --batch "$batch" "${quick[@]}" \
    --shared ../shared/bench --out runs/bench/gpu-pytorch.json

"$python" - "$batch" <<'EOF'
import json, sys
b = sys.argv[1]
ours = json.load(open("runs/bench/gpu-ours.json"))["train"][f"CIFAR10_DDPM_b{b}"]
torch = json.load(open("runs/bench/gpu-pytorch.json"))
print(f"\ncifar10_ddpm training step, batch {b}, {torch['env'].get('gpu')}")
print(f"  ours (Burn CUDA, fp32)    {ours['img_per_s']:8.1f} img/s")
for name in ("fp32", "bf16"):
    r = torch[name]
    print(f"  PyTorch eager {name}        {r['img_per_s']:8.1f} img/s   ours / PyTorch = "
          f"{ours['img_per_s'] / r['img_per_s']:.2f}× img/s")
EOF
