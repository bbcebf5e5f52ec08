#!/usr/bin/env bash
# The GPU check: one prepared run on a GPU machine (no Rust, no network) that proves and times
# the CUDA backend beside PyTorch on the same GPU.
#
#   scripts/gpu-check.sh prepare                  # here: build the CUDA binaries offline, strip,
#                                                 # compress them into gpu-carry/ with ref_unet.py
#   scripts/gpu-check.sh run OUT [--quick] [--no-compile] [--device cuda|cpu] [--python PY]
#                                [--only a,b,b2,c,d,e,f,g]
#                                                 # on the GPU machine, from the repository root;
#                                                 # --only runs those stages (a check split over
#                                                 # two calls, each within one call's time limit)
#
# `run` does, each stage with its own time limit so that one failure costs only its stage:
#   a. CUDA = CPU: the shipped MNIST weights, `trainer sample` (50-step DDIM, w = 3, seed 0,
#      8 per class) on CUDA and on the CPU; max |Δ| per pixel, pass at ≤ 2/255;
#   b. the `cifar10_ddpm` training step at batch 128: ours (fp32, and bf16 mixed precision)
#      against PyTorch eager fp32, bf16 autocast and bf16 autocast under torch.compile: img/s
#      and model FLOP utilisation;
#   b2. the `mnist` preset's training step at batch 128: ours (fp32, bf16) against PyTorch eager
#      (fp32, bf16 autocast), img/s;
#   c. 50-step DDIM + guidance of the `mnist` preset at batch 256: ours against PyTorch, img/s;
#   d. trains the `mnist` preset on CUDA for two minutes and writes a sample grid;
#   e. bf16 mixed precision on CUDA: 40 steps, and the run resumed from step 20 repeats its
#      losses exactly;
#   f. wgpu: where the machine has a Vulkan driver for the GPU (an ICD file naming nvidia),
#      guided DDIM on `--device wgpu`; otherwise the summary says there is none;
#   g. data parallel through Burn's collective (NCCL): `--devices all` (one rank per GPU; on
#      one GPU a one-rank context, whose all-reduce is the identity) trains 20 steps of the
#      `mnist` preset, and the plain single-device run of the same settings; the logged losses
#      must agree within 1e-5 relative (bit for bit on one GPU).
# Everything lands in OUT: summary.json and summary.md (the table), the logs, each stage's raw
# JSON, the two sample grids. `--device cpu` runs the same stages on the CPU with tiny sizes:
# a smoke test of this script on a machine without a GPU (the numbers mean nothing).
#
# The machine needs python3 with PyTorch (CUDA) and numpy. NVRTC compiles our kernels at run
# time against CUDA headers: the script finds libnvrtc and the headers in the CUDA toolkit
# ($CUDA_PATH, /usr/local/cuda) or else in PyTorch's `nvidia` wheels.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
carry="$root/gpu-carry"

prepare() {
    # The workspace's binaries with the test command's features (CUDA is in the default
    # build), so it reuses that build.
    cargo build --release --workspace --bins
    local target="${CARGO_TARGET_DIR:-$root/target}"
    rm -rf "$carry.tmp" && mkdir -p "$carry.tmp"
    for exe in trainer bench; do
        strip -o "$carry.tmp/$exe" "$target/release/$exe"
        xz -T0 -6 "$carry.tmp/$exe"
    done
    local ref="$root/../shared/bench/ref_unet.py"
    [ -f "$ref" ] || { echo "error: $ref not found (the PyTorch reference U-Net)" >&2; exit 1; }
    cp "$ref" "$carry.tmp/"
    rm -rf "$carry" && mv "$carry.tmp" "$carry"
    du -sh "$carry"/*
    echo "carry gpu-carry/ (ignored by git) and run: scripts/gpu-check.sh run \$OUT"
}

[ $# -ge 1 ] || { sed -n '2,26p' "$0" >&2; exit 2; }
mode="$1"; shift
case "$mode" in
    prepare) prepare; exit 0 ;;
    run) ;;
    *) echo "error: unknown mode '$mode' (prepare or run)" >&2; exit 2 ;;
esac

[ $# -ge 1 ] || { echo "error: run needs an output folder" >&2; exit 2; }
out="$1"; shift
quick=0 compile=1 device=cuda python=python3 only=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; shift ;;
        --no-compile) compile=0; shift ;;
        --device) device="${2:?--device needs cuda or cpu}"; shift 2 ;;
        --python) python="${2:?--python needs a value}"; shift 2 ;;
        --only) only="${2:?--only needs a list of stages}"; shift 2 ;;
        *) echo "error: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
    esac
done
case "$device" in cuda | cpu) ;; *) echo "error: --device must be cuda or cpu, got '$device'" >&2; exit 2 ;; esac
mkdir -p "$out"
out="$(cd "$out" && pwd)"
started=$(date +%s)
log() { echo "[$(($(date +%s) - started)) s] $*" | tee -a "$out/check.log"; }

# The binaries: the carried compressed ones, else a local build (the CPU smoke test).
bin="$out/bin"
mkdir -p "$bin"
for exe in trainer bench; do
    if [ -f "$carry/$exe.xz" ]; then
        xz -dc "$carry/$exe.xz" >"$bin/$exe" && chmod +x "$bin/$exe"
    elif [ -x "${CARGO_TARGET_DIR:-$root/target}/release/$exe" ]; then
        cp "${CARGO_TARGET_DIR:-$root/target}/release/$exe" "$bin/$exe"
    else
        echo "error: no $exe: run 'scripts/gpu-check.sh prepare' where Rust is" >&2; exit 1
    fi
done
shared="$carry"
[ -f "$shared/ref_unet.py" ] || shared="$root/../shared/bench"

# NVRTC and the CUDA headers, from the toolkit or PyTorch's wheels.
if [ "$device" = cuda ]; then
    site="$("$python" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)"
    if [ -z "${CUDA_PATH:-}" ] && [ ! -f /usr/local/cuda/include/cuda_fp16.h ]; then
        hdr="$(find $site -path '*nvidia*' -name cuda_fp16.h 2>/dev/null | head -1 || true)"
        [ -n "$hdr" ] && export CUDA_PATH="$(dirname "$(dirname "$hdr")")"
    fi
    nvrtc="$(find ${CUDA_PATH:-/usr/local/cuda} $site -name 'libnvrtc.so*' 2>/dev/null | grep -v builtins | head -1 || true)"
    [ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "CUDA_PATH=${CUDA_PATH:-unset} nvrtc=${nvrtc:-not found}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1 || true
fi
"$bin/trainer" devices --json >"$out/devices.json" 2>&1 || true
log "devices: $(tr -d '\n' <"$out/devices.json" | head -c 400)"

if [ "$quick" = 1 ] || [ "$device" = cpu ]; then q=(--quick); else q=(); fi
if [ "$device" = cpu ]; then
    train_b=2 sample_b=2 per_class=1 train_s=20
else
    train_b=128 sample_b=256 per_class=8 train_s=120
fi

stage() { # name, time limit (s), command...
    local name="$1" limit="$2"; shift 2
    local letter="${name%%-*}"
    if [ -n "$only" ] && [[ ",$only," != *",$letter,"* ]]; then return 0; fi
    log "stage $name (limit ${limit} s): $*"
    local t0=$(date +%s) rc=0
    timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1 || rc=$?
    log "stage $name: exit $rc after $(($(date +%s) - t0)) s"
    echo "{\"stage\": \"$name\", \"exit\": $rc, \"s\": $(($(date +%s) - t0))}" >>"$out/stages.jsonl"
    tail -3 "$out/$name.log" | sed 's/^/    /' | tee -a "$out/check.log"
}

# a. CUDA = CPU on the shipped weights.
sample=(sample --weights weights/mnist.safetensors --sampler ddim --steps 50 --guidance 3
        --class all --num "$per_class" --seed 0)
stage a-sample-device 240 "$bin/trainer" "${sample[@]}" --device "$device" \
    --out "$out/a-$device.png" --npy "$out/a-$device.npy"
stage a-sample-cpu 120 "$bin/trainer" "${sample[@]}" --device cpu \
    --out "$out/a-cpu.png" --npy "$out/a-cpu.npy"

# b. The cifar10_ddpm training step.
stage b-train-ours 150 "$bin/bench" --device "$device" --sections cifar-train \
    --cifar-train-batch "$train_b" "${q[@]}" --out "$out/b-train-ours.json"
stage b-train-ours-bf16 150 "$bin/bench" --device "$device" --sections cifar-train \
    --cifar-train-batch "$train_b" --precision bf16 "${q[@]}" --out "$out/b-train-ours-bf16.json"
compile_flag=(); [ "$compile" = 1 ] || compile_flag=(--no-compile)
[ "$device" = cpu ] && compile_flag=(--no-compile)
stage b-train-pytorch 240 "$python" scripts/bench-gpu-pytorch.py --device "$device" \
    --sections train --batch "$train_b" "${q[@]}" "${compile_flag[@]}" --shared "$shared" \
    --out "$out/b-train-pytorch.json"

# b2. The `mnist` preset's training step.
stage b2-train-ours 150 "$bin/bench" --device "$device" --sections train \
    --train-batches "$train_b" "${q[@]}" --out "$out/b2-train-ours.json"
stage b2-train-ours-bf16 150 "$bin/bench" --device "$device" --sections train \
    --train-batches "$train_b" --precision bf16 "${q[@]}" --out "$out/b2-train-ours-bf16.json"
stage b2-train-pytorch 180 "$python" scripts/bench-gpu-pytorch.py --device "$device" \
    --sections train --train-models S --batch "$train_b" "${q[@]}" --no-compile \
    --shared "$shared" --out "$out/b2-train-pytorch.json"

# c. Guided DDIM sampling.
stage c-ddim-ours 120 "$bin/bench" --device "$device" --sections ddim --sample-batch "$sample_b" \
    "${q[@]}" --out "$out/c-ddim-ours.json"
stage c-ddim-pytorch 120 "$python" scripts/bench-gpu-pytorch.py --device "$device" \
    --sections ddim --sample-batch "$sample_b" "${q[@]}" --shared "$shared" \
    --out "$out/c-ddim-pytorch.json"

# d. Two minutes of training, then the EMA model's grid from the newest checkpoint.
stage d-train "$((train_s + 30))" timeout -s INT "$train_s" "$bin/trainer" train \
    --dataset mnist10k --device "$device" --steps 1000000 --batch-size "$train_b" --lr 1e-3 \
    --warmup-steps 200 --checkpoint-every 100 --keep-checkpoints 1 --sample-every 0 --seed 0 \
    --out "$out/d-run"
stage d-export 60 "$bin/trainer" export --checkpoint "$out/d-run" --out "$out/d-ema.safetensors"
stage d-sample 120 "$bin/trainer" sample --weights "$out/d-ema.safetensors" --device "$device" \
    --guidance 3 --num "$per_class" --seed 0 --out "$out/d-samples.png"

# e. bf16 mixed precision on the device: 40 steps, then the same run resumed from its step-20
#    checkpoint in another directory; resume is exact, so the losses logged after step 20 match.
e_train=(train --dataset mnist10k --device "$device" --precision bf16 --batch-size "$train_b"
         --lr 1e-3 --warmup-steps 10 --checkpoint-every 20 --keep-checkpoints 2 --sample-every 0
         --sample-steps 2 --seed 0)
stage e-bf16-train 120 "$bin/trainer" "${e_train[@]}" --steps 40 --out "$out/e-run"
stage e-bf16-resume 120 "$bin/trainer" train --resume "$out/e-run/checkpoints/step-00000020" \
    --device "$device" --steps 40 --out "$out/e-resumed"

# f. wgpu on the GPU's own Vulkan driver, where there is one.
icd="$(grep -lis nvidia /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null | head -1 || true)"
if [ -n "$only" ] && [[ ",$only," != *",f,"* ]]; then
    :
elif [ "$device" = cuda ] && [ -n "$icd" ]; then
    echo "$icd" >"$out/vulkan-icd.txt"
    stage f-wgpu 180 "$bin/bench" --device wgpu --sections ddim --sample-batch "$sample_b" --quick \
        --out "$out/f-wgpu.json"
else
    log "stage f-wgpu: skipped (device $device; NVIDIA Vulkan ICD: ${icd:-none found})"
fi

# g. Data parallel through Burn's collective, against one device.
g_train=(train --dataset mnist10k --steps 20 --batch-size "$train_b" --dropout 0 --lr 1e-3
         --warmup-steps 5 --checkpoint-every 0 --sample-every 0 --sample-steps 2 --seed 0)
if [ "$device" = cuda ]; then g_dev=(--devices all); else g_dev=(--devices cpu,cpu); fi
stage g-dp-train 240 "$bin/trainer" "${g_train[@]}" "${g_dev[@]}" --out "$out/g-dp"
stage g-single-train 240 "$bin/trainer" "${g_train[@]}" --device "$device" --out "$out/g-single"

log "summary"
"$python" - "$out" "$device" <<'EOF'
import json, os, sys
out, device = sys.argv[1], sys.argv[2]

def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

s = {"device": device, "gpu": open(os.path.join(out, "gpu.txt")).read().strip()
     if os.path.exists(os.path.join(out, "gpu.txt")) else None}
s["stages"] = [json.loads(l) for l in open(os.path.join(out, "stages.jsonl"))] if os.path.exists(os.path.join(out, "stages.jsonl")) else []
rows = []

# a
try:
    import numpy as np
    a, b = np.load(os.path.join(out, f"a-{device}.npy")), np.load(os.path.join(out, "a-cpu.npy"))
    # Values in [-1, 1] become 8-bit pixels as (v + 1) / 2 * 255.
    d = float(np.abs(a.astype(np.float64) - b).max() * 127.5)
    s["a"] = {"images": int(a.shape[0]), "max_abs_diff_px": d, "pass": d <= 2.0}
    rows.append(("a. CUDA = CPU (shipped MNIST, DDIM-50, w=3)",
                 f"max abs diff {d:.3f}/255 over {a.shape[0]} images", "PASS" if d <= 2 else "FAIL"))
except Exception as e:  # the stage failed; its log says why
    s["a"] = {"error": str(e)}
    rows.append(("a. CUDA = CPU", f"not measured ({e})", "FAIL"))

# Peak dense throughput, for model FLOP utilisation (NVIDIA's data sheets, SXM parts).
PEAKS = {"H200": {"bf16": 989e12, "tf32": 494.7e12}, "H100": {"bf16": 989e12, "tf32": 494.7e12}}
gpu = s["gpu"] or ""
peak = next((v for k, v in PEAKS.items() if k in gpu and "PCIe" not in gpu), None)
ours_t, torch_t = load("b-train-ours.json"), load("b-train-pytorch.json")
ours_t16 = load("b-train-ours-bf16.json")
flops = None
for t in (ours_t, ours_t16):
    fwd = (t or {}).get("flops", {}).get("CIFAR10_DDPM", {}).get("fwd_flops_per_image")
    flops = flops or (3 * fwd if fwd else None)  # forward + backward ≈ 3 forwards
train = {}
if ours_t:
    r = next(iter(ours_t.get("train", {}).values()), None)
    if r:
        train["ours_fp32"] = r["img_per_s"]
if ours_t16:
    r = next(iter(ours_t16.get("train", {}).values()), None)
    if r:
        train["ours_bf16"] = r["img_per_s"]
if torch_t:
    for k, v in torch_t.get("train", {}).items():
        train[f"pytorch_{k}"] = v["img_per_s"]
s["b"] = {"img_per_s": train, "train_flops_per_image": flops, "peak": peak}
for k, v in train.items():
    prec = "bf16" if "bf16" in k else "tf32"
    mfu = (v * flops / peak[prec]) if (flops and peak) else None
    s["b"].setdefault("mfu", {})[k] = mfu
    ratio = v / train["pytorch_fp32"] if "pytorch_fp32" in train and prec == "tf32" else (
        v / train["pytorch_bf16"] if "pytorch_bf16" in train else None)
    rows.append((f"b. cifar10_ddpm train step, {k}",
                 f"{v:.1f} img/s" + (f", MFU {mfu * 100:.1f}% of {prec} peak" if mfu else ""),
                 f"{ratio:.2f}x PyTorch eager same precision" if ratio and not k.startswith("pytorch") else ""))
if "ours_bf16" not in train:
    rows.append(("b. cifar10_ddpm train step, ours_bf16", "not measured (see b-train-ours-bf16.log)", "FAIL"))

# b2
def first(t, prefix=""):
    return next((v["img_per_s"] for k, v in (t or {}).get("train", {}).items() if k.startswith(prefix)), None)
b2 = {"ours_fp32": first(load("b2-train-ours.json")), "ours_bf16": first(load("b2-train-ours-bf16.json"))}
torch_b2 = load("b2-train-pytorch.json") or {}
for k, v in torch_b2.get("train", {}).items():
    b2[f"pytorch_{k.removeprefix('S_')}"] = v["img_per_s"]
b2 = {k: v for k, v in b2.items() if v is not None}
s["b2"] = {"img_per_s": b2}
for k in ("ours_fp32", "ours_bf16"):
    if k not in b2:
        rows.append((f"b2. mnist train step, {k}", f"not measured (see b2-train-{k.replace('ours_fp32', 'ours').replace('ours_bf16', 'ours-bf16')}.log)", "FAIL"))
for k, v in b2.items():
    other = b2.get("pytorch_" + k.split("_")[-1])
    ratio = v / other if other and k.startswith("ours") else None
    rows.append((f"b2. mnist train step, {k}", f"{v:.1f} img/s",
                 f"{ratio:.2f}x PyTorch eager same precision" if ratio else ""))

# c
ours_c, torch_c = load("c-ddim-ours.json"), load("c-ddim-pytorch.json")
c = {}
if ours_c:
    r = next(iter(ours_c.get("ddim", {}).values()), None)
    if r:
        c["ours"] = r["img_per_s"]
if torch_c and "ddim" in torch_c:
    c["pytorch"] = torch_c["ddim"]["img_per_s"]
s["c"] = {"img_per_s": c}
for k, v in c.items():
    ratio = v / c["pytorch"] if "pytorch" in c and k == "ours" else None
    rows.append((f"c. DDIM-50 + CFG, mnist preset, {k}", f"{v:.1f} img/s",
                 f"{ratio:.2f}x PyTorch" if ratio else ""))

# d
steps, ips = 0, []
try:
    for line in open(os.path.join(out, "d-run", "metrics.jsonl")):
        m = json.loads(line)
        steps = max(steps, m["step"] + 1)
        ips.append(m["img_per_s"])
except OSError:
    pass
ips.sort()
s["d"] = {"steps": steps, "median_img_per_s": ips[len(ips) // 2] if ips else None,
          "grid": "d-samples.png" if os.path.exists(os.path.join(out, "d-samples.png")) else None}
rows.append(("d. mnist preset, trained on the device",
             f"{steps} steps, median {s['d']['median_img_per_s'] or 0:.0f} img/s",
             "grid d-samples.png" if s["d"]["grid"] else "no grid"))

# e
def losses(run):
    try:
        return {m["step"]: m["loss"] for m in map(json.loads, open(os.path.join(out, run, "metrics.jsonl")))}
    except OSError:
        return {}
full, resumed = losses("e-run"), losses("e-resumed")
after = sorted(k for k in resumed if k >= 20)
same = bool(after) and all(full.get(k) == resumed[k] for k in after)
finite = bool(full) and all(v == v and abs(v) != float("inf") for v in full.values())
s["e"] = {"losses": {str(k): v for k, v in sorted(full.items())},
          "resumed": {str(k): v for k, v in sorted(resumed.items())}, "exact_resume": same,
          "finite": finite}
rows.append(("e. bf16 training on the device, resumed at step 20",
             f"{len(full)} logged losses, {'finite' if finite else 'NOT finite'}; "
             f"losses at steps {after} {'equal' if same else 'DIFFER'} after resume",
             "PASS" if same and finite else "FAIL"))

# g
dp, single = losses("g-dp"), losses("g-single")
common = sorted(set(dp) & set(single))
worst = max((abs(dp[k] - single[k]) / max(abs(single[k]), 1e-12) for k in common), default=None)
s["g"] = {"steps_compared": common, "max_relative_loss_diff": worst,
          "ranks": (load("g-dp/config.json") or {}).get("data_parallel_ranks")}
rows.append((f"g. data parallel ({s['g']['ranks']} rank(s); Burn's collective on CUDA, the host reducer on the CPU) vs one device, 20 steps",
             f"losses at steps {common}: max relative difference {worst:.1e}" if worst is not None
             else "not measured (see g-dp-train.log)",
             "PASS" if worst is not None and worst <= 1e-5 else "FAIL"))

# f
f = load("f-wgpu.json")
icd = open(os.path.join(out, "vulkan-icd.txt")).read().strip() if os.path.exists(os.path.join(out, "vulkan-icd.txt")) else None
r = next(iter((f or {}).get("ddim", {}).values()), None)
s["f"] = {"vulkan_icd": icd, "img_per_s": r["img_per_s"] if r else None}
if icd is None:
    rows.append(("f. wgpu on the GPU's Vulkan", "not tried: no NVIDIA Vulkan driver (ICD) on the machine", ""))
else:
    rows.append(("f. wgpu on the GPU's Vulkan, DDIM-50 + CFG",
                 f"{r['img_per_s']:.1f} img/s" if r else "failed (see f-wgpu.log)",
                 f"{r['img_per_s'] / c['ours']:.2f}x ours on CUDA" if r and c.get("ours") else ""))

with open(os.path.join(out, "summary.json.tmp"), "w") as f:
    json.dump(s, f, indent=1)
os.replace(os.path.join(out, "summary.json.tmp"), os.path.join(out, "summary.json"))
md = [f"GPU check on {s['gpu'] or device}", "", "| check | result | verdict |", "|---|---|---|"]
md += [f"| {a} | {b} | {c} |" for a, b, c in rows]
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md))
EOF
rm -rf "$bin"
log "done in $(($(date +%s) - started)) s"
