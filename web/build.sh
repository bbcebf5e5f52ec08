#!/usr/bin/env bash
# Builds the browser package into pkg/ (what index.html loads): the web crate for
# wasm32-unknown-unknown (release), then wasm-bindgen --target web. wasm-bindgen-cli must match
# the crate's wasm-bindgen exactly (=0.2.130); it is installed when missing. No wasm-opt
# (Debian's binaryen breaks the output).
set -euo pipefail
cd "$(dirname "$0")/.."
# One target dir for `cargo run`, the scripts and the tests: ./target unless set (CI sets its cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
WB_VERSION=0.2.130
if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$WB_VERSION" ]; then
  cargo install wasm-bindgen-cli --version "=$WB_VERSION"
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo build --release --target wasm32-unknown-unknown -p web
rm -rf pkg.tmp
wasm-bindgen --target web --out-dir pkg.tmp --out-name web \
  --remove-name-section --remove-producers-section \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/web.wasm"
# The page runs the sampler in this Web Worker, which imports ./web.js from beside it.
cp web/worker.js pkg.tmp/worker.js
rm -rf pkg && mv pkg.tmp pkg
ls -la pkg
