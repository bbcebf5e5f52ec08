#!/usr/bin/env python3
"""Ours vs PyTorch on the same U-Net, one after the other in one session, as a ratio table.

What: runs the `bench` binary (Burn; `cargo build --release --workspace` first), then the
PyTorch reference model of ../shared/bench/ref_unet.py with the same configs (its `S` model
built with time_mode="film" = our `mnist` preset; `CIFAR10_DDPM` = our `cifar10_ddpm`), timed
with the reference's own `bench()` helper, and prints ours / PyTorch for each case.

Why: machines differ and are noisy; only ratios measured side by side mean anything.

Usage (needs a Python with torch, e.g. `python3 -m venv v && v/bin/pip install torch numpy`):
    v/bin/python scripts/bench-vs-pytorch.py [--quick] [--shared ../shared/bench] \
        [--device cpu] [--out-dir runs/bench] [--threads 2]
Writes OUT_DIR/ours.json, OUT_DIR/pytorch.json and OUT_DIR/compare.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def run_ours(args, out):
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/rust-ddpm/target"))
    exe = os.path.join(target, "release", "bench")
    if not os.path.exists(exe):
        sys.exit(f"error: {exe} not found; run `cargo build --release --workspace` first")
    cmd = [exe, "--device", args.device, "--out", out, "--full-step"]
    if args.quick:
        cmd.append("--quick")
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return json.load(f)


def run_pytorch(args, out):
    sys.path.insert(0, os.path.abspath(args.shared))
    try:
        import torch
        import ref_unet as R
    except ImportError as e:
        sys.exit(f"error: cannot import torch / ref_unet ({e}); run with a Python that has torch "
                 f"and pass --shared DIR holding ref_unet.py")
    torch.set_num_threads(args.threads)
    quick = dict(warmup=1, min_reps=2, max_reps=2, target_s=0.0) if args.quick else None
    res = {"env": {"torch": torch.__version__, "threads": args.threads, "quick": args.quick}}

    def timed(fn, **kw):
        # quiet=False: do not wait for idle cores (ours ran just before, on purpose).
        return R.bench(fn, quiet=False, **(quick or kw))

    s_cfg = dict(time_mode="film")
    s_fwd = R.count_flops(lambda: R.make_model("S", **s_cfg)(*R.inputs(R.CONFIGS["S"], 1)))
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    r = timed(lambda: a @ b, warmup=2, min_reps=10, max_reps=30, target_s=4.0)
    res["matmul_fp32"] = {"2048x2048": {"median_s": r["median_s"], "gflops": 2 * n ** 3 / r["median_s"] / 1e9}}
    print(f"pytorch matmul fp32 2048²: {res['matmul_fp32']['2048x2048']['gflops']:.1f} GFLOP/s", flush=True)

    fw = {}
    m = R.make_model("S", **s_cfg).eval()
    for B in (1, 16, 64):
        x, t, y = R.inputs(R.CONFIGS["S"], B)

        def f():
            with torch.no_grad():
                m(x, t, y)
        r = timed(f, warmup=3, min_reps=7, max_reps=50, target_s=8.0)
        fw[f"S_b{B}"] = {"median_s": r["median_s"], "ms": r["median_s"] * 1e3, "img_per_s": B / r["median_s"],
                         "gflops_per_s": s_fwd * B / r["median_s"] / 1e9}
        print(f"pytorch forward S-film b{B}: {fw[f'S_b{B}']['ms']:.2f} ms", flush=True)
    res["forward"] = fw

    tr = {}
    for B in (32, 128):
        m = R.make_model("S", **s_cfg).train()
        opt = torch.optim.AdamW(m.parameters(), lr=2e-4)
        x, _, y = R.inputs(R.CONFIGS["S"], B)
        r = timed(lambda: R.train_step(m, opt, x, y), warmup=3, min_reps=7, max_reps=30, target_s=20.0)
        tr[f"S_b{B}"] = {"median_s": r["median_s"], "ms": r["median_s"] * 1e3, "img_per_s": B / r["median_s"]}
        print(f"pytorch train S-film b{B}: {tr[f'S_b{B}']['ms']:.1f} ms/step", flush=True)
    res["train"] = tr

    m = R.make_model("S", **s_cfg).eval()
    y = torch.arange(16) % 10
    r = timed(lambda: R.ddim_cfg_sample(m, (16, 1, 28, 28), y, steps=50), warmup=1, min_reps=3, max_reps=5, target_s=60.0)
    res["ddim"] = {"S_b16_50steps_cfg": {"median_s": r["median_s"], "s": r["median_s"]}}
    print(f"pytorch ddim S-film b16 x50 CFG: {r['median_s']:.2f} s", flush=True)

    m = R.make_model("CIFAR10_DDPM").eval()
    x, t, _ = R.inputs(R.CONFIGS["CIFAR10_DDPM"], 16)

    def fc():
        with torch.no_grad():
            m(x, t)
    r = timed(fc, warmup=1, min_reps=3, max_reps=10, target_s=10.0)
    res["forward"]["CIFAR10_DDPM_b16"] = {"median_s": r["median_s"], "ms": r["median_s"] * 1e3}
    print(f"pytorch forward CIFAR10_DDPM b16: {r['median_s'] * 1e3:.0f} ms", flush=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    return res


def table(ours, torch_res):
    rows = [
        ("train S b32 (fwd+MSE+bwd+AdamW)", ("train", "S_b32")),
        ("train S b128", ("train", "S_b128")),
        ("forward S b1", ("forward", "S_b1")),
        ("forward S b16", ("forward", "S_b16")),
        ("forward S b64", ("forward", "S_b64")),
        ("DDIM-50 + CFG S b16", ("ddim", "S_b16_50steps_cfg")),
        ("forward cifar10_ddpm b16", ("forward", "CIFAR10_DDPM_b16")),
    ]
    lines = ["| case | ours (ms) | PyTorch (ms) | ours / PyTorch | ours GFLOP/s |", "|---|---|---|---|---|"]
    for name, (sec, key) in rows:
        o = ours.get(sec, {}).get(key)
        p = torch_res.get(sec, {}).get(key)
        if not o or not p:
            continue
        om, pm = o["median_s"] * 1e3, p["median_s"] * 1e3
        g = o.get("gflops_per_s")
        lines.append(f"| {name} | {om:.1f} | {pm:.1f} | {om / pm:.2f}× | {g:.1f} |" if g else
                     f"| {name} | {om:.1f} | {pm:.1f} | {om / pm:.2f}× | |")
    om = ours.get("matmul_fp32", {}).get("2048x2048", {}).get("gflops")
    pm = torch_res.get("matmul_fp32", {}).get("2048x2048", {}).get("gflops")
    if om and pm:
        lines.append(f"| fp32 matmul 2048² (GFLOP/s, higher is better) | {om:.1f} | {pm:.1f} | {om / pm:.2f}× | |")
        t = ours.get("train", {}).get("S_b32", {}).get("gflops_per_s")
        if t:
            lines.append("")
            lines.append(f"Training S b32 runs at {t:.1f} GFLOP/s = {100 * t / pm:.0f} % of PyTorch's measured "
                         f"fp32 matmul rate ({100 * t / om:.0f} % of Burn's own).")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", default="runs/bench")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.time()
    ours = run_ours(args, os.path.join(args.out_dir, "ours.json"))
    torch_res = run_pytorch(args, os.path.join(args.out_dir, "pytorch.json"))
    md = table(ours, torch_res)
    md = (f"# Burn (flex) vs PyTorch, {time.strftime('%Y-%m-%d %H:%M')}, {args.threads} threads, "
          f"{'quick' if args.quick else 'full'} run, {time.time() - t0:.0f} s\n\n" + md + "\n")
    with open(os.path.join(args.out_dir, "compare.md"), "w") as f:
        f.write(md)
    print()
    print(md)


if __name__ == "__main__":
    main()
