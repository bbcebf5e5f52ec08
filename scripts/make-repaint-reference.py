#!/usr/bin/env python3
"""Reference values from diffusers' RePaintScheduler for crates/diffusion/tests/repaint.rs.

Records, with diffusers 0.42.1 (linear β 1e-4 → 0.02, T = 1000, clip_sample on):
- `set_timesteps(n, jump_length, jump_n_sample)` for a few settings;
- `step(model_output, t, sample, original_image, mask, generator)` at several t and η, with the
  standard normal draw the generator gives inside the step (drawn again from a generator in the
  same state), so the Rust test can pass the very same noise;
- `undo_step(sample, t, generator)` with its draws, one per β.

The toolkit's schedule is float64 and diffusers' float32, so values agree to about 1e-6.

Set-up (once): python3 -m venv v && v/bin/pip install torch numpy diffusers==0.42.1
Run:           v/bin/python scripts/make-repaint-reference.py crates/diffusion/tests/data/repaint_reference.json
"""

import json
import sys

import diffusers
import torch
from diffusers import RePaintScheduler

SHAPE = (2, 1, 4, 4)


def values(t):
    return [float(f"{v:.9g}") for v in t.flatten().tolist()]


def main():
    out = {"diffusers_version": diffusers.__version__, "shape": list(SHAPE), "timesteps": [], "steps": [], "undo": []}
    for n, jl, jns in [(10, 3, 2), (25, 5, 3), (50, 10, 10), (20, 10, 1)]:
        s = RePaintScheduler()
        s.set_timesteps(n, jump_length=jl, jump_n_sample=jns)
        out["timesteps"].append({"n": n, "jump_length": jl, "jump_n_sample": jns, "timesteps": [int(t) for t in s.timesteps]})
    g = torch.Generator().manual_seed(0)
    for n, t, eta in [(10, 900, 0.0), (10, 500, 1.0), (10, 0, 1.0), (25, 480, 0.5)]:
        s = RePaintScheduler(eta=eta)
        s.set_timesteps(n)
        model_output = torch.randn(SHAPE, generator=g)
        sample = torch.randn(SHAPE, generator=g) * 1.5
        original = torch.rand(SHAPE, generator=g) * 2 - 1
        mask = (torch.rand(SHAPE, generator=g) > 0.5).float()
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
        r = s.step(model_output, t, sample, original, mask, generator=torch.Generator().manual_seed(seed))
        out["steps"].append({
            "n": n, "t": t, "eta": eta, "model_output": values(model_output), "sample": values(sample),
            "original_image": values(original), "mask": values(mask), "noise": values(noise),
            "prev_sample": values(r.prev_sample), "pred_original_sample": values(r.pred_original_sample),
        })
    for n, t in [(10, 300), (50, 0)]:
        s = RePaintScheduler()
        s.set_timesteps(n)
        sample = torch.randn(SHAPE, generator=g)
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        gg = torch.Generator().manual_seed(seed)
        noise = [torch.randn(SHAPE, generator=gg) for _ in range(1000 // n)]
        r = s.undo_step(sample, t, generator=torch.Generator().manual_seed(seed))
        out["undo"].append({"n": n, "t": t, "sample": values(sample), "noise": [values(z) for z in noise], "result": values(r)})
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
