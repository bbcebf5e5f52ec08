#!/usr/bin/env python3
"""PyTorch reference for the GPU check: the `cifar10_ddpm` training step and guided DDIM sampling.

What: builds ../shared/bench/ref_unet.py's models on --device and times, with the device
synchronised around each timed run (medians after warm-up):
  * train: the training step of each of --train-models at --batch: CIFAR10_DDPM (= our
    `cifar10_ddpm` preset, 35.7 M parameters; ours: `bench --sections cifar-train`) and S (= our
    `mnist` preset, class-conditional with 10 % null labels; ours: `bench --sections train`):
    q-sample at uniform t, eps-MSE, backward, AdamW (lr 2e-4); in fp32 eager, bf16 autocast eager
    and bf16 autocast under torch.compile (--no-compile skips the last: compiling takes a minute
    or more). CIFAR10_DDPM's cases are named fp32/bf16/bf16_compile, S's S_fp32/...;
  * ddim: 50-step DDIM with classifier-free guidance (w = 3, cond + uncond in one 2B forward) of
    the S model (= our `mnist` preset) at --sample-batch images, as ours
    (`bench --sections ddim --sample-batch B`), fp32.
Writes img/s per case as JSON.

Why: `ref_unet.py` was written for the CPU (its schedule and timesteps live there); the GPU check
(scripts/gpu-check.sh) compares ours and PyTorch on the same GPU.

Usage (on a CPU it works too, as a smoke test):
    python3 scripts/bench-gpu-pytorch.py [--device cuda] [--sections train,ddim] [--batch 128] \
        [--sample-batch 256] [--quick] [--no-compile] [--shared DIR] [--out FILE]
"""

import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"),
                    help="folder holding ref_unet.py")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sections", default="train,ddim", help="any of train,ddim")
    ap.add_argument("--batch", type=int, default=128, help="training batch")
    ap.add_argument("--train-models", default="CIFAR10_DDPM", help="any of CIFAR10_DDPM,S")
    ap.add_argument("--sample-batch", type=int, default=256, help="images per DDIM run")
    ap.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed runs per case")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile training case")
    ap.add_argument("--out", default="runs/bench/gpu-pytorch.json")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= {"train", "ddim"}:
        sys.exit(f"error: unknown section in --sections {args.sections!r} (expected train,ddim)")
    train_models = args.train_models.split(",")
    if not set(train_models) <= {"CIFAR10_DDPM", "S"}:
        sys.exit(f"error: unknown model in --train-models {args.train_models!r} (expected CIFAR10_DDPM,S)")
    if args.batch < 1 or args.sample_batch < 1:
        sys.exit("error: --batch and --sample-batch must be positive")
    sys.path.insert(0, os.path.abspath(args.shared))
    try:
        import torch
        import torch.nn.functional as F
        import ref_unet as R
    except ImportError as e:
        sys.exit(f"error: cannot import torch / ref_unet ({e}); pass --shared DIR holding ref_unet.py")
    try:
        dev = torch.device(args.device)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as e:
        sys.exit(f"error: device {args.device!r} is not available ({e})")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(fn, warmup, reps):
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), times

    alphas_cumprod = R.ALPHAS_CUMPROD.to(dev)
    res = {"env": {"torch": torch.__version__, "device": str(dev), "batch": args.batch,
                   "sample_batch": args.sample_batch,
                   "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}}

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.out)

    if "train" in sections:
        cases = [("fp32", False, False), ("bf16", True, False)]
        if not args.no_compile:
            cases.append(("bf16_compile", True, True))
        for (name, amp, compiled), model_name in [(c, m) for m in train_models for c in cases]:
            model = R.make_model(model_name).to(dev).train()
            cfg = R.CONFIGS[model_name]
            key = name if model_name == "CIFAR10_DDPM" else f"{model_name}_{name}"
            opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
            fwd = torch.compile(model) if compiled else model
            gen = torch.Generator(device=dev).manual_seed(0)
            res_px = cfg["resolution"]
            x0 = torch.rand(args.batch, cfg["in_ch"], res_px, res_px, device=dev, generator=gen) * 2 - 1
            classes = cfg.get("num_classes")

            def step():
                t = torch.randint(0, R.T_STEPS, (args.batch,), device=dev, generator=gen)
                noise = torch.randn(x0.shape, device=dev, generator=gen)
                ab = alphas_cumprod[t].view(-1, 1, 1, 1)
                xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                    if classes:
                        # Class labels with 10 % dropped to the null class, as our trainer.
                        y = torch.randint(0, classes, (args.batch,), device=dev, generator=gen)
                        drop = torch.rand(args.batch, device=dev, generator=gen) < 0.1
                        y = torch.where(drop, torch.full_like(y, classes), y)
                        out = fwd(xt, t, y)
                    else:
                        out = fwd(xt, t)
                    loss = F.mse_loss(out.float(), noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            t0 = time.perf_counter()
            warmup, reps = (1, 2) if args.quick else ((3 if compiled else 3), 10)
            median, _ = timed(step, warmup, reps)
            res.setdefault("train", {})[key] = {
                "median_s": median, "ms": median * 1e3, "img_per_s": args.batch / median, "reps": reps,
                "wall_s_with_warmup": time.perf_counter() - t0}
            print(f"pytorch train {model_name} b{args.batch} {name} on {dev}: {median * 1e3:.1f} ms/step  "
                  f"{args.batch / median:.1f} img/s", flush=True)
            save()
            del model, opt, fwd

    if "ddim" in sections:
        model = R.make_model("S").to(dev).eval()
        B = args.sample_batch
        gen = torch.Generator(device=dev).manual_seed(0)
        y = torch.arange(B, device=dev) % model.num_classes
        y_all = torch.cat([y, torch.full_like(y, model.num_classes)])
        ts = list(range(0, R.T_STEPS, R.T_STEPS // 50))[::-1]
        ac = R.ALPHAS_CUMPROD.double()

        @torch.no_grad()
        def sample():
            x = torch.randn((B, 1, 28, 28), device=dev, generator=gen)
            for i, t in enumerate(ts):
                ab = float(ac[t])
                ab_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else 1.0
                tt = torch.full((2 * B,), t, dtype=torch.long, device=dev)
                eps_c, eps_u = model(torch.cat([x, x]), tt, y_all).chunk(2)
                eps = eps_u + 3.0 * (eps_c - eps_u)
                x0 = ((x - (1 - ab) ** 0.5 * eps) / ab ** 0.5).clamp(-1, 1)
                eps = (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5
                x = ab_prev ** 0.5 * x0 + (1 - ab_prev) ** 0.5 * eps
            return x

        warmup, reps = (1, 2) if args.quick else (1, 5)
        median, _ = timed(sample, warmup, reps)
        res["ddim"] = {"median_s": median, "img_per_s": B / median, "ms_per_step": median / 50 * 1e3,
                       "reps": reps, "model": "S", "steps": 50, "guidance": 3.0}
        print(f"pytorch ddim S b{B} x50 CFG on {dev}: {median:.3f} s  {B / median:.1f} img/s", flush=True)
        save()
    save()


if __name__ == "__main__":
    main()
