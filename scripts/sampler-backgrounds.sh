#!/usr/bin/env bash
# Clean samples from every sampler (issue 34's table): for a model, `trainer eval` (classifier
# accuracy only, no Inception) of n samples at guidance 1 and 3 with each sampler, then
# `scripts/backgrounds.py` on the samples: how many are read as the class asked for, and how
# many sit on a grey or speckled background. The seed (default 1000) is not one the README or
# the training grids use. One run per setting under OUT/<setting>/ (a setting whose eval.json
# exists is skipped, so the script resumes); the table goes to OUT/backgrounds.md.
#
# Usage: scripts/sampler-backgrounds.sh WEIGHTS OUT [n, default 200] [seed, default 1000]
#        [--frame]   (Fashion-MNIST: judge the outer frame, as backgrounds.py --frame)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
WEIGHTS="$1" OUT="$2" N="${3:-200}" SEED="${4:-1000}" FRAME="${5:-}"
# The dataset of the model: Fashion-MNIST's config names its classes (T-shirt/top, Trouser, …).
DATASET=mnist10k
grep -q '"Trouser"' "${WEIGHTS%.safetensors}.json" && DATASET=fashion-mnist
T="$CARGO_TARGET_DIR/release/trainer"
[ -x "$T" ] || cargo build --release -p trainer
SETTINGS=(
  "ddpm-50:--sampler ddpm --steps 50"
  "ddim-50:--sampler ddim --steps 50"
  "dpmsolver++-karras-15:--sampler dpmsolver++ --karras-sigmas --steps 15"
  "sde-dpmsolver++-karras-15:--sampler sde-dpmsolver++ --karras-sigmas --steps 15"
)
mkdir -p "$OUT"
table="$OUT/backgrounds.md"
{
  echo "Model \`$WEIGHTS\`, n = $N per setting, seed $SEED, classes balanced"
  echo
  echo "| sampler | w | read as the class asked for | grey | speckled | flagged |"
  echo "|---|---|---|---|---|---|"
} > "$table.tmp"
for s in "${SETTINGS[@]}"; do
  name="${s%%:*}" flags="${s#*:}"
  dir="$OUT/$name"
  if [ ! -f "$dir/eval.json" ]; then
    # shellcheck disable=SC2086
    "$T" eval --weights "$WEIGHTS" --dataset "$DATASET" --n "$N" --seed "$SEED" --no-inception \
      --guidance-sweep 1,3 $flags --npy --out "$dir" > /dev/null
  fi
  for w in 1 3; do
    acc=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(next(f\"{100*x['scores']['classifier_accuracy']:.1f} %\" for x in r['rows'] if x['guidance']==$w))" "$dir/eval.json")
    line=$(python3 scripts/backgrounds.py $FRAME "$dir/samples-w$w.npy")
    grey=$(sed -E 's/.* ([0-9]+) grey.*/\1/' <<<"$line")
    speck=$(sed -E 's/.* ([0-9]+) speckled.*/\1/' <<<"$line")
    flagged=$(sed -E 's/.* ([0-9]+) flagged \(([0-9.]+ %)\).*/\1 (\2)/' <<<"$line")
    echo "| $name | $w | $acc | $grey | $speck | $flagged |" >> "$table.tmp"
  done
done
mv "$table.tmp" "$table"
cat "$table"
