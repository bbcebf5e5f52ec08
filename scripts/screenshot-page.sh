#!/usr/bin/env bash
# Retakes the README's picture of the page (docs/page.png) from the current shipped model:
# `trainer serve` serves index.html and pkg/ on 127.0.0.1, headless Chromium (Debian's, driven by
# playwright-core) opens the page, runs its default grid (the golden case marked `page` in
# tests/golden/cases.json: 16 images of class 8, SDE-DPM-Solver++ Karras, 15 steps, w = 3) and,
# once the canvas equals the native grid, saves a full-page screenshot. This is the page test
# (tests/e2e/page.test.mjs) with PAGE_SCREENSHOT set, so the picture is only written when the
# page behaves as tested.
#
# Needs what the test command installs and builds: run ./tests/run-all.sh once, or
# ./web/build.sh and `cargo build --release -p trainer` (plus `npm ci` in tests/e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
out="${1:-docs/page.png}"
[ -f pkg/worker.js ] || { echo "no pkg/: build the page first (./web/build.sh)" >&2; exit 1; }
[ -d tests/e2e/node_modules/playwright-core ] || (cd tests/e2e && npm ci --no-audit --no-fund)
cargo build --release -p trainer
PAGE_SCREENSHOT="$out" node tests/e2e/page.test.mjs "$CARGO_TARGET_DIR/release/trainer"
echo "wrote $out"
