#!/usr/bin/env bash
# Builds the browser bundles into pkg/ (what index.html loads), laid out as
# `wasm-pack build --target web` lays them out:
#   pkg/web.js + web_bg.wasm         the CPU bundle (Burn's flex compiled to wasm): the page's
#                                    first and usually only download (baseline SIMD128)
#   pkg/relaxed/web.js + web_bg.wasm the CPU bundle with relaxed SIMD, instead of pkg/web.js where
#                                    the browser has relaxed SIMD
#   pkg/threads/web.js + web_bg.wasm the CPU bundle with WebAssembly threads and relaxed SIMD,
#                                    for cross-origin-isolated pages (trainer serve's)
#   pkg/webgpu/web.js + web_bg.wasm  WebGPU (with the CPU backend as its fallback), fetched by
#                                    the worker only where a hardware adapter exists
#   pkg/worker.js                    the Web Worker that imports one of them
# Each bundle is `cargo build -p web --target wasm32-unknown-unknown`, then the pinned
# `wasm-bindgen --target web`, then npm binaryen's `wasm-opt --strip-debug --strip-producers`
# (names and producers only; its optimisation passes measured slower, docs/web-bundle.md) —
# what wasm-pack did, without installing wasm-pack. The CPU bundles use the `wasm-release`
# profile (fat LTO, one codegen unit: smaller and faster); the WebGPU bundle uses `release` with
# the default features, the very build the in-browser tests (`cargo test --release --target
# wasm32-unknown-unknown -p web`) reuse. The threads bundle (nightly, its own target dir) builds
# in the background while the others build: its long single-threaded steps (std, the LTO link)
# fill the cores the others leave idle. Installs the pinned wasm-bindgen-cli and (npm) binaryen
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# One target dir for `cargo run`, the scripts and the tests: ./target unless set (CI sets its cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
WB_VERSION=0.2.130  # = the crate's wasm-bindgen
# A pinned tool, with its own lockfile when the registry has every version it pins, else resolved
# afresh: a fresh machine's crates.io index lacked a version that wasm-bindgen-cli 0.2.130's
# lockfile pins (webpki-roots 1.0.11), and `--locked` alone then fails the whole test command.
install_pinned() {
  cargo install "$1" --version "=$2" --locked ||
    { echo "$1 $2: its lockfile does not resolve here; resolving its dependencies afresh" >&2
      cargo install "$1" --version "=$2"; }
}
if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$WB_VERSION" ]; then
  install_pinned wasm-bindgen-cli "$WB_VERSION"
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# wasm-opt from npm's binaryen (Debian's breaks wasm-bindgen output).
[ -x web/node_modules/.bin/wasm-opt ] || (cd web && npm ci --no-audit --no-fund)
WASM_OPT="$PWD/web/node_modules/.bin/wasm-opt"
rm -rf pkg.tmp
# One bundle into pkg.tmp/<dir>: bundle DIR PROFILE [cargo flags…]. Binaryen reads the wasm
# features from the target_features section (`--all-features` would write compact imports,
# which Chromium rejects).
bundle() {
  local dir="$1" profile="$2"; shift 2
  cargo build -p web --lib --target wasm32-unknown-unknown --profile "$profile" "$@"
  local wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/$profile/web.wasm"
  wasm-bindgen "$wasm" --target web --out-dir "pkg.tmp/$dir" --out-name web
  "$WASM_OPT" "pkg.tmp/$dir/web_bg.wasm" -o "pkg.tmp/$dir/web_bg.wasm" --strip-debug --strip-producers
}
# pkg/threads/: the CPU bundle with WebAssembly threads (rayon on Web Workers through
# wasm-bindgen-rayon), for cross-origin-isolated pages, with relaxed SIMD as pkg/relaxed/ (the
# worker loads it only where the browser validates relaxed SIMD; a browser with threads but
# without relaxed SIMD, such as Safari, runs the single-threaded baseline bundle: a fourth
# build, threads without relaxed SIMD, would cost CI another nightly build-std). Threads
# need a std built with atomics, so a nightly toolchain with rust-src (-Z build-std); its own
# target dir (other RUSTFLAGS).
# Without a nightly toolchain it is skipped and the page runs the single-threaded bundle.
NIGHTLY="${RUST_DDPM_NIGHTLY:-nightly}"
threads_pid=""
if rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
  rustup component list --toolchain "$NIGHTLY" --installed | grep -q '^rust-src' || rustup component add rust-src --toolchain "$NIGHTLY"
  rustup target list --toolchain "$NIGHTLY" --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown --toolchain "$NIGHTLY"
  echo "threads bundle (in the background, log: pkg.tmp/threads.log): $(rustup run "$NIGHTLY" rustc --version)"
  mkdir -p pkg.tmp
  ( export CARGO_TARGET_DIR="$CARGO_TARGET_DIR/wasm-threads" RUSTUP_TOOLCHAIN="$NIGHTLY"
    export RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 -C link-arg=--max-memory=4294967296"
    bundle threads wasm-release --no-default-features --features threads,relaxed-simd -Z build-std=panic_abort,std
  ) > pkg.tmp/threads.log 2>&1 &
  threads_pid=$!
else
  echo "threads bundle skipped: no $NIGHTLY toolchain (rustup toolchain install $NIGHTLY)" >&2
fi
bundle . wasm-release --no-default-features --features cpu
# pkg/relaxed/: the same with relaxed SIMD (the convolution product's fused multiply-add,
# flex-kernels' conv2d/wasm_gemm.rs), which the worker loads instead where the browser
# validates relaxed SIMD (Chrome/Edge 114+); a browser without it cannot compile this module.
# Same flags and target dir as pkg/: only the crates that see the feature rebuild.
# (The CPU bundles share one output file per profile, so each is bound before the next builds.)
bundle relaxed wasm-release --no-default-features --features cpu,relaxed-simd
bundle webgpu release
if [ -n "$threads_pid" ]; then
  if ! wait "$threads_pid"; then
    tail -40 pkg.tmp/threads.log >&2
    echo "error: the threads bundle failed (log above: pkg.tmp/threads.log)" >&2
    exit 1
  fi
  rm pkg.tmp/threads.log
fi
# The page runs the sampler in this Web Worker, which imports ./web.js or ./webgpu/web.js.
cp web/worker.js pkg.tmp/worker.js
rm -rf pkg && mv pkg.tmp pkg
# What the page downloads: raw and gzip -9 bytes of each file.
printf '%-28s %12s %12s\n' file bytes gzip
for f in pkg/worker.js pkg/web.js pkg/web_bg.wasm pkg/relaxed/web.js pkg/relaxed/web_bg.wasm pkg/threads/web.js pkg/threads/web_bg.wasm pkg/webgpu/web.js pkg/webgpu/web_bg.wasm; do
  [ -f "$f" ] || continue
  printf '%-28s %12d %12d\n' "$f" "$(stat -c %s "$f")" "$(gzip -9 -c "$f" | wc -c)"
done
