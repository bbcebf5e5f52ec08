#!/usr/bin/env bash
# Runs every test of the project. This is the README's test command and what CI runs.
#
# Installs what is missing (and only that): the wasm32 Rust target and Debian's
# Fashion-MNIST package. Builds go to $CARGO_TARGET_DIR (default ~/.cache/rust-ddpm/target,
# outside the clone) so warm runs are quick. One profile (release) for everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rust-ddpm/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "tools"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null || echo "warning: dataset-fashion-mnist not installed; its test will say skipped"
fi

step "native tests (release profile)"
cargo test --release --workspace

step "shared crate for wasm32 + WebGPU"
cargo build --release --target wasm32-unknown-unknown -p diffusion --features webgpu,flex

step "all tests passed"
