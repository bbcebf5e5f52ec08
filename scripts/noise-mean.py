#!/usr/bin/env python3
"""How well a model predicts the mean of the noise, per timestep (issue 34's grey backgrounds).

What
    Takes a model exported to a diffusers folder (``trainer export --weights W --format
    diffusers --out DIR``) and the first 256 held-out MNIST-10k test digits x_0, noises them to
    x_t = α_t x_0 + σ_t ε at a range of timesteps (one fixed ε, seed 0), and compares the mean
    of each image's predicted noise ε̂ (for v-prediction ε̂ = σ_t x_t + α_t v̂) with the mean of
    the true ε, for the digit's class and for the null class:

    * slope: the least-squares slope of mean(ε̂) on mean(ε): 1 when the model removes the
      noise's mean, below 1 when it takes part of it for the image;
    * rms(x̂₀ error): the RMS over images of (mean(ε̂) − mean(ε)) · σ_t / α_t, the error this
      makes in the brightness of the x̂_0 the samplers step towards. A deterministic sampler
      carries it into the image: a grey background.

Why
    The ε-prediction MNIST model predicted 96 % of the noise's mean at t = 999, so its x̂_0
    there was off by 0.76 in brightness (RMS; the range is [-1, 1]); the loss barely sees this
    (ε's mean has a standard deviation of 1/28), but σ/α = 156 amplifies it. v-prediction's loss
    weights that error as x̂_0's. docs/samplers.md has the tables.

Usage
    /path/to/venv/bin/python scripts/noise-mean.py DIR/unet   (needs torch and diffusers)
"""

import gzip
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "crates/datasets/data/mnist10k"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("Usage")[1].strip())
    torch.set_num_threads(2)
    folder = Path(sys.argv[1])
    unet = UNet2DModel.from_pretrained(folder).eval()
    config = (folder.parent / "scheduler/scheduler_config.json")
    v_pred = config.exists() and "v_prediction" in config.read_text()
    raw = gzip.open(DATA / "test-images-idx3-ubyte.gz").read()[16:]
    labels = np.frombuffer(gzip.open(DATA / "test-labels-idx1-ubyte.gz").read()[8:], np.uint8)
    n = 256
    x0 = np.frombuffer(raw, np.uint8).reshape(-1, 1, 28, 28)[:n].astype(np.float32) / 127.5 - 1
    x0 = torch.tensor(x0)
    y = torch.tensor(labels[:n].astype(np.int64))
    null = torch.full_like(y, unet.config.num_class_embeds - 1)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    print(f"{folder}: {'v' if v_pred else 'ε'}-prediction, {n} test digits")
    print("| t | α_t | slope, class | rms(x̂₀ error), class | slope, null class | rms(x̂₀ error), null class |")
    print("|---|---|---|---|---|---|")
    for t in [999, 950, 900, 800, 700, 600, 500, 400, 300, 200, 100]:
        a = alphas_cumprod[t].sqrt().item()
        s = (1 - alphas_cumprod[t]).sqrt().item()
        xt = a * x0 + s * eps
        cells = []
        for cls in (y, null):
            with torch.no_grad():
                out = unet(xt, torch.full((n,), t), class_labels=cls).sample
            eps_hat = s * xt + a * out if v_pred else out
            true_mean = eps.mean((1, 2, 3)).numpy()
            pred_mean = eps_hat.mean((1, 2, 3)).numpy()
            slope = np.polyfit(true_mean, pred_mean, 1)[0]
            err = np.sqrt(((pred_mean - true_mean) ** 2).mean()) * s / a
            cells += [f"{slope:.3f}", f"{err:.3f}"]
        print(f"| {t} | {a:.4f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
