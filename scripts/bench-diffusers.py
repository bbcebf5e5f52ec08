#!/usr/bin/env python3
"""Import time and a 50-step DDIM of a DDPM-CIFAR-sized model: ours against diffusers, side by
side on the same machine (docs/diffusers.md).

Builds a `UNet2DModel` with google/ddpm-cifar10-32's config (35.7 M parameters, random weights
from a fixed seed, GroupNorms perturbed) as a pipeline folder with a DDPM scheduler
(`clip_sample=False`, so both sides take exactly the same DDIM steps), then, alternating the two
sides `--repeats` times:

- ours: `trainer import-diffusers` (wall time of the command), and `trainer sample --sampler
  ddim --steps 50 --latents x_T.npy` (the sampling time it prints: model loaded, noise given);
- diffusers: `UNet2DModel.from_pretrained` (import), and the 50-step DDIM loop of
  `DDIMPipeline` (`scheduler.step(..., eta=0)`) under `torch.no_grad()` from the same x_T.

Both run on the CPU with the same thread count (`--threads`, default 2). Prints medians, their
ratio, and the largest difference between the two final images (in 8-bit pixel units).

Set-up (once): python3 -m venv v && v/bin/pip install torch numpy diffusers==0.42.1
Run:           v/bin/python scripts/bench-diffusers.py target/release/trainer runs/bench-diffusers
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

GOOGLE_CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    attention_head_dim=None,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    norm_num_groups=32,
)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("trainer")
    p.add_argument("out")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    folder = os.path.join(a.out, "cifar10-like")
    if not os.path.isdir(folder):
        torch.manual_seed(0)
        unet = UNet2DModel(**GOOGLE_CIFAR10)
        g = torch.Generator().manual_seed(1)
        for m in unet.modules():
            if isinstance(m, torch.nn.GroupNorm):
                with torch.no_grad():
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
        DDPMScheduler(clip_sample=False).save_pretrained(os.path.join(folder, "scheduler"))
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            json.dump({"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
                       "unet": ["diffusers", "UNet2DModel"]}, f)
    x_t = torch.randn((a.images, 3, 32, 32), generator=torch.Generator().manual_seed(2))
    np.save(os.path.join(a.out, "x_t.npy"), x_t.numpy())
    weights = os.path.join(a.out, "cifar10-like.safetensors")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))

    ours_import, ours_ddim, theirs_import, theirs_ddim = [], [], [], []
    ours_x = theirs_x = None
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        subprocess.run([a.trainer, "import-diffusers", folder, "--out", weights], check=True,
                       env=env, capture_output=True)
        ours_import.append(time.perf_counter() - t0)
        npy = os.path.join(a.out, "ours.npy")
        r = subprocess.run([a.trainer, "sample", "--weights", weights, "--latents",
                            os.path.join(a.out, "x_t.npy"), "--num", str(a.images), "--sampler", "ddim",
                            "--steps", str(a.steps), "--out", os.path.join(a.out, "ours.png"), "--npy", npy],
                           check=True, env=env, capture_output=True, text=True)
        ours_ddim.append(float(re.search(r"images in ([0-9.]+) s", r.stderr).group(1)))
        ours_x = np.load(npy)

        t0 = time.perf_counter()
        unet = UNet2DModel.from_pretrained(os.path.join(folder, "unet")).eval()
        theirs_import.append(time.perf_counter() - t0)
        sched = DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
        sched.set_timesteps(a.steps)
        t0 = time.perf_counter()
        with torch.no_grad():
            x = x_t.clone()
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
        theirs_ddim.append(time.perf_counter() - t0)
        theirs_x = x.numpy()

    med = statistics.median
    diff = np.abs(np.clip(ours_x, -1, 1) - np.clip(theirs_x, -1, 1)).max() * 127.5
    report = {
        "threads": a.threads,
        "images": a.images,
        "steps": a.steps,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "ours_import_s": ours_import,
        "diffusers_import_s": theirs_import,
        "ours_ddim_s": ours_ddim,
        "diffusers_ddim_s": theirs_ddim,
        "median_import_ratio": med(ours_import) / med(theirs_import),
        "median_ddim_ratio": med(ours_ddim) / med(theirs_ddim),
        "max_pixel_difference_255": float(diff),
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=1))
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
