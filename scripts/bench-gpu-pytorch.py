#!/usr/bin/env python3
"""PyTorch eager reference for the GPU benchmark: the `cifar10_ddpm` training step, fp32 and bf16.

What: builds ../shared/bench/ref_unet.py's CIFAR10_DDPM model (= our `cifar10_ddpm` preset:
35.7 M parameters, dropout 0.1, unconditional) on --device, and times the same step as ours
(`bench --sections cifar-train`): q-sample at uniform t, ε-MSE, backward, AdamW (lr 2e-4) —
once in fp32 and once under bf16 autocast — with the device synchronised around each step.
Prints and writes img/s (median step time after warm-up).

Why: the GPU half of issue 7 compares img/s on the same GPU; `ref_unet.train_step` keeps its
schedule and timesteps on the CPU, so it cannot run on a GPU as is.

Usage (run by scripts/gpu-bench.sh; on a CPU it works too, e.g. as a smoke test):
    python3 scripts/bench-gpu-pytorch.py [--device cuda] [--batch 128] [--quick] \
        [--shared ../shared/bench] [--out runs/bench/gpu-pytorch.json]
"""

import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed steps per case")
    ap.add_argument("--out", default="runs/bench/gpu-pytorch.json")
    args = ap.parse_args()
    if args.batch < 1:
        sys.exit("error: --batch must be positive")
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

    alphas_cumprod = R.ALPHAS_CUMPROD.to(dev)
    res = {"env": {"torch": torch.__version__, "device": str(dev), "batch": args.batch,
                   "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}}
    for name, amp in (("fp32", False), ("bf16", True)):
        model = R.make_model("CIFAR10_DDPM").to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
        gen = torch.Generator(device=dev).manual_seed(0)
        x0 = torch.rand(args.batch, 3, 32, 32, device=dev, generator=gen) * 2 - 1

        def step():
            t = torch.randint(0, R.T_STEPS, (args.batch,), device=dev, generator=gen)
            noise = torch.randn(x0.shape, device=dev, generator=gen)
            ab = alphas_cumprod[t].view(-1, 1, 1, 1)
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.mse_loss(model(xt, t).float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        warmup, reps = (1, 2) if args.quick else (3, 10)
        for _ in range(warmup):
            step()
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        res[name] = {"median_s": median, "ms": median * 1e3, "img_per_s": args.batch / median, "reps": reps}
        print(f"pytorch train CIFAR10_DDPM b{args.batch} {name} on {dev}: {median * 1e3:.1f} ms/step  "
              f"{args.batch / median:.1f} img/s", flush=True)
        del model, opt
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
