#!/usr/bin/env python3
"""Ours vs PyTorch on the same U-Net, one after the other in one session, as a ratio table.

What: section by section (matmul, forward, train, ddim, cifar), runs the `bench` binary (Burn;
`cargo build --release --workspace` first) and the PyTorch reference model of
../shared/bench/ref_unet.py with the same configs (its `S` model built with time_mode="film" =
our `mnist` preset; `CIFAR10_DDPM` = our `cifar10_ddpm`), timed with the reference's own
`bench()` helper, back to back; with --rounds N it repeats that N times (alternating which side
goes first) and prints the median of the per-round ratios ours / PyTorch and their range.

Why: machines differ and are noisy (this VM's speed drifts by tens of percent over minutes);
only ratios measured side by side, close together in time, mean anything.

Usage (needs a Python with torch, e.g. `python3 -m venv v && v/bin/pip install torch numpy`):
    v/bin/python scripts/bench-vs-pytorch.py [--quick] [--rounds 3] [--sections train,ddim] \
        [--shared ../shared/bench] [--device cpu] [--out-dir runs/bench] [--threads 2]
Writes OUT_DIR/ours.json, OUT_DIR/pytorch.json and OUT_DIR/compare.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time


SECTIONS = ["matmul", "forward", "train", "ddim", "cifar"]


def run_ours(args, out, section):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    exe = os.path.join(target, "release", "bench")
    if not os.path.exists(exe):
        sys.exit(f"error: {exe} not found; run `cargo build --release --workspace` first")
    cmd = [exe, "--device", args.device, "--out", out, "--sections", section, "--full-step"]
    if args.quick:
        cmd.append("--quick")
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return json.load(f)


class PyTorch:
    """The reference's models, timed with its own `bench()` helper, one section at a time."""

    def __init__(self, args):
        sys.path.insert(0, os.path.abspath(args.shared))
        try:
            import torch
            import ref_unet as R
        except ImportError as e:
            sys.exit(f"error: cannot import torch / ref_unet ({e}); run with a Python that has torch "
                     f"and pass --shared DIR holding ref_unet.py")
        torch.set_num_threads(args.threads)
        self.torch, self.R = torch, R
        self.quick = dict(warmup=1, min_reps=2, max_reps=2, target_s=0.0) if args.quick else None
        self.env = {"torch": torch.__version__, "threads": args.threads, "quick": args.quick}
        self.s_cfg = dict(time_mode="film")
        self.s_fwd = R.count_flops(lambda: R.make_model("S", **self.s_cfg)(*R.inputs(R.CONFIGS["S"], 1)))

    def timed(self, fn, **kw):
        # quiet=False: do not wait for idle cores (ours ran just before, on purpose).
        return self.R.bench(fn, quiet=False, **(self.quick or kw))

    def run(self, section):
        torch, R, res = self.torch, self.R, {"env": self.env}
        if section == "matmul":
            n = 2048
            a, b = torch.randn(n, n), torch.randn(n, n)
            r = self.timed(lambda: a @ b, warmup=2, min_reps=10, max_reps=30, target_s=4.0)
            res["matmul_fp32"] = {"2048x2048": {"median_s": r["median_s"], "gflops": 2 * n ** 3 / r["median_s"] / 1e9}}
            print(f"pytorch matmul fp32 2048²: {res['matmul_fp32']['2048x2048']['gflops']:.1f} GFLOP/s", flush=True)
        elif section == "forward":
            fw = {}
            m = R.make_model("S", **self.s_cfg).eval()
            for B in (1, 16, 64):
                x, t, y = R.inputs(R.CONFIGS["S"], B)

                def f():
                    with torch.no_grad():
                        m(x, t, y)
                r = self.timed(f, warmup=3, min_reps=7, max_reps=50, target_s=8.0)
                fw[f"S_b{B}"] = {"median_s": r["median_s"], "ms": r["median_s"] * 1e3, "img_per_s": B / r["median_s"],
                                 "gflops_per_s": self.s_fwd * B / r["median_s"] / 1e9}
                print(f"pytorch forward S-film b{B}: {fw[f'S_b{B}']['ms']:.2f} ms", flush=True)
            res["forward"] = fw
        elif section == "train":
            tr = {}
            for B in (32, 128):
                m = R.make_model("S", **self.s_cfg).train()
                opt = torch.optim.AdamW(m.parameters(), lr=2e-4)
                x, _, y = R.inputs(R.CONFIGS["S"], B)
                r = self.timed(lambda: R.train_step(m, opt, x, y), warmup=3, min_reps=7, max_reps=30, target_s=20.0)
                tr[f"S_b{B}"] = {"median_s": r["median_s"], "ms": r["median_s"] * 1e3, "img_per_s": B / r["median_s"]}
                print(f"pytorch train S-film b{B}: {tr[f'S_b{B}']['ms']:.1f} ms/step", flush=True)
            res["train"] = tr
        elif section == "ddim":
            m = R.make_model("S", **self.s_cfg).eval()
            y = torch.arange(16) % 10
            r = self.timed(lambda: R.ddim_cfg_sample(m, (16, 1, 28, 28), y, steps=50),
                           warmup=1, min_reps=3, max_reps=5, target_s=60.0)
            res["ddim"] = {"S_b16_50steps_cfg": {"median_s": r["median_s"], "s": r["median_s"]}}
            print(f"pytorch ddim S-film b16 x50 CFG: {r['median_s']:.2f} s", flush=True)
        elif section == "cifar":
            m = R.make_model("CIFAR10_DDPM").eval()
            x, t, _ = R.inputs(R.CONFIGS["CIFAR10_DDPM"], 16)

            def fc():
                with torch.no_grad():
                    m(x, t)
            r = self.timed(fc, warmup=1, min_reps=3, max_reps=10, target_s=10.0)
            res["forward"] = {"CIFAR10_DDPM_b16": {"median_s": r["median_s"], "ms": r["median_s"] * 1e3}}
            print(f"pytorch forward CIFAR10_DDPM b16: {r['median_s'] * 1e3:.0f} ms", flush=True)
        return res


def merge(into, part):
    """Adds one section's results (nested dicts) to a round's."""
    for k, v in part.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


ROWS = [
    ("train S b32 (fwd+MSE+bwd+AdamW)", ("train", "S_b32")),
    ("train S b128", ("train", "S_b128")),
    ("forward S b1", ("forward", "S_b1")),
    ("forward S b16", ("forward", "S_b16")),
    ("forward S b64", ("forward", "S_b64")),
    ("DDIM-50 + CFG S b16", ("ddim", "S_b16_50steps_cfg")),
    ("forward cifar10_ddpm b16", ("forward", "CIFAR10_DDPM_b16")),
]


def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def table(rounds):
    """`rounds`: [(ours, pytorch)] result pairs. Each row: medians over rounds of each side's
    time and of the per-round ratio (each round's pair ran back to back), and the ratio's range."""
    lines = ["| case | ours (ms) | PyTorch (ms) | ours / PyTorch (median) | range over rounds | ours GFLOP/s |",
             "|---|---|---|---|---|---|"]
    for name, (sec, key) in ROWS:
        pairs = [(o.get(sec, {}).get(key), p.get(sec, {}).get(key)) for o, p in rounds]
        pairs = [(o, p) for o, p in pairs if o and p]
        if not pairs:
            continue
        om = median([o["median_s"] * 1e3 for o, _ in pairs])
        pm = median([p["median_s"] * 1e3 for _, p in pairs])
        ratios = [o["median_s"] / p["median_s"] for o, p in pairs]
        g = [o["gflops_per_s"] for o, _ in pairs if o.get("gflops_per_s")]
        lines.append(f"| {name} | {om:.1f} | {pm:.1f} | {median(ratios):.2f}× | "
                     f"{min(ratios):.2f}–{max(ratios):.2f}× | {f'{median(g):.1f}' if g else ''} |")
    mm = [(o.get("matmul_fp32", {}).get("2048x2048", {}).get("gflops"),
           p.get("matmul_fp32", {}).get("2048x2048", {}).get("gflops")) for o, p in rounds]
    mm = [(o, p) for o, p in mm if o and p]
    if mm:
        om, pm = median([o for o, _ in mm]), median([p for _, p in mm])
        lines.append(f"| fp32 matmul 2048² (GFLOP/s, higher is better) | {om:.1f} | {pm:.1f} | {om / pm:.2f}× | "
                     f"{min(p for _, p in mm):.0f}–{max(p for _, p in mm):.0f} (PyTorch) | |")
        t = [o.get("train", {}).get("S_b32", {}).get("gflops_per_s") for o, _ in rounds]
        t = [v for v in t if v]
        if t:
            t = median(t)
            lines.append("")
            lines.append(f"Training S b32 runs at {t:.1f} GFLOP/s = {100 * t / pm:.0f} % of PyTorch's measured "
                         f"fp32 matmul rate ({100 * t / om:.0f} % of Burn's own) (medians over rounds).")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every section this many times (ours and PyTorch back to back, the order "
                         "alternating) and report median ratios: the VM's speed drifts by minutes")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    ap.add_argument("--out-dir", default="runs/bench")
    args = ap.parse_args()
    sections = [x for x in args.sections.split(",") if x]
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown or args.rounds < 1:
        sys.exit(f"error: unknown sections {unknown} (expected {','.join(SECTIONS)}) or --rounds < 1")
    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.time()
    pytorch = PyTorch(args)
    rounds = []
    for k in range(args.rounds):
        ours, torch_res = {}, {}
        for section in sections:
            tmp = os.path.join(args.out_dir, "ours-section.json")
            steps = [lambda: merge(ours, run_ours(args, tmp, section)),
                     lambda: merge(torch_res, pytorch.run(section))]
            for step in (steps if k % 2 == 0 else steps[::-1]):
                step()
        rounds.append((ours, torch_res))
    os.remove(os.path.join(args.out_dir, "ours-section.json"))
    for name, data in (("ours.json", [o for o, _ in rounds]), ("pytorch.json", [p for _, p in rounds])):
        with open(os.path.join(args.out_dir, name), "w") as f:
            json.dump(data[0] if len(data) == 1 else data, f, indent=1)
    md = table(rounds)
    md = (f"# Burn (flex) vs PyTorch, {time.strftime('%Y-%m-%d %H:%M')}, {args.threads} threads, "
          f"{'quick' if args.quick else 'full'} run, {args.rounds} round(s) interleaved by section, "
          f"{time.time() - t0:.0f} s\n\n" + md + "\n")
    with open(os.path.join(args.out_dir, "compare.md"), "w") as f:
        f.write(md)
    print()
    print(md)


if __name__ == "__main__":
    main()
