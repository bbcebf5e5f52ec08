#!/usr/bin/env bash
# Builds the CUDA backend without internet access.
#
# Burn's `cuda` feature pulls `cubecl-cuda`, which depends on `cubecl-llvm`, whose build script
# downloads an LLVM bundle. This script patches in `crates/cubecl-llvm-offline` (the handful of
# names `cubecl-cuda` uses, no LLVM) for this one cargo command; with `cubecl-cuda`'s `cpp`
# feature (on in `crates/diffusion`) kernels compile through CUDA C++ and NVRTC at run time.
# A build with internet needs none of this: `cargo build --release -p trainer --features cuda`.
#
#   scripts/cuda-offline.sh                       # = build --release -p trainer -p bench
#   scripts/cuda-offline.sh test --release -p training --lib device
#
# The patch changes the dependency graph, so cargo rewrites Cargo.lock; the committed lock file
# is put back afterwards, whatever happens.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ $# -eq 0 ]; then
    set -- build --release -p trainer -p bench
fi
lock_backup="$(mktemp)"
cp Cargo.lock "$lock_backup"
trap 'cp "$lock_backup" "$root/Cargo.lock"; rm -f "$lock_backup"' EXIT
cargo "$@" --features cuda \
    --config "patch.crates-io.cubecl-llvm.path=\"$root/crates/cubecl-llvm-offline\""
