#!/usr/bin/env python3
"""Reference trajectories from diffusers' DPMSolverMultistepScheduler for
crates/diffusion/tests/dpm_solver.rs.

Each case drives the scheduler with a fixed analytic model, model_output = A * x + B * t, from a
fixed x_T, and records the timesteps, the noise levels and every intermediate x_t; the Rust
test runs `DpmSolverMultistep` on the same inputs and compares every one.

diffusers builds alphas_cumprod in float32 (a cumulative product of 1000 float32 factors);
the toolkit computes its schedule in float64. So that the comparison tests the solver rather
than float32 cumprod rounding, the scheduler is given the float64 alphas_cumprod of the same
linear schedule before `set_timesteps` (everything after that is diffusers' own code: its
float32 sigmas and its float32 step arithmetic).

Set-up (once; the Linux torch wheel is large):
    python3 -m venv v && v/bin/pip install torch numpy diffusers==0.42.1
Run:
    v/bin/python scripts/make-dpm-solver-reference.py crates/diffusion/tests/data/dpm_solver_reference.json
"""

import json
import os
import sys

import diffusers
import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

T = 1000
A, B = 0.9, -4e-4
SHAPE = [2, 1, 3, 3]

# (name, our DpmSolverMultistepConfig fields, prediction type). The names are the same in
# diffusers, so the dict is passed to it unchanged (num_inference_steps to set_timesteps).
CASES = [
    ("order1-linspace-eps-10", dict(solver_order=1, num_inference_steps=10), "epsilon"),
    ("order2-linspace-eps-10", dict(num_inference_steps=10), "epsilon"),
    ("order2-linspace-eps-20", dict(num_inference_steps=20), "epsilon"),
    ("order2-trailing-eps-10", dict(num_inference_steps=10, timestep_spacing="trailing"), "epsilon"),
    ("order1-trailing-v-10", dict(solver_order=1, num_inference_steps=10, timestep_spacing="trailing"), "v_prediction"),
    ("order2-trailing-v-12", dict(num_inference_steps=12, timestep_spacing="trailing"), "v_prediction"),
    ("order2-leading-v-10", dict(num_inference_steps=10, timestep_spacing="leading", steps_offset=1), "v_prediction"),
    ("order2-karras-eps-10", dict(num_inference_steps=10, use_karras_sigmas=True), "epsilon"),
    ("order2-karras-v-16", dict(num_inference_steps=16, use_karras_sigmas=True), "v_prediction"),
    ("order2-heun-eps-8", dict(num_inference_steps=8, solver_type="heun"), "epsilon"),
    ("order2-sigmamin-eps-16", dict(num_inference_steps=16, final_sigmas_type="sigma_min", lower_order_final=False), "epsilon"),
    ("order2-sigmamin-euler-eps-16", dict(num_inference_steps=16, final_sigmas_type="sigma_min", euler_at_final=True), "epsilon"),
    ("order2-clip-eps-10", dict(num_inference_steps=10, thresholding=True, sample_max_value=1.0), "epsilon"),
    ("order2-threshold-eps-10", dict(num_inference_steps=10, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5), "epsilon"),
    ("sde-order2-eps-10", dict(num_inference_steps=10, algorithm_type="sde-dpmsolver++"), "epsilon"),
    ("sde-order2-heun-v-10", dict(num_inference_steps=10, algorithm_type="sde-dpmsolver++", solver_type="heun"), "v_prediction"),
]


def alphas_cumprod_f64():
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    return torch.from_numpy(np.cumprod(1.0 - betas))


def run_case(fields, prediction_type, x_T, rng):
    kwargs = {k: v for k, v in fields.items() if k != "num_inference_steps"}
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", prediction_type=prediction_type, **kwargs
    )
    sched.alphas_cumprod = alphas_cumprod_f64()
    sched.set_timesteps(fields["num_inference_steps"])
    sde = fields.get("algorithm_type") == "sde-dpmsolver++"
    x = torch.from_numpy(x_T.copy())
    samples, noises = [], []
    for t in sched.timesteps:
        model_output = A * x + B * float(t)
        noise = None
        if sde:
            noise = torch.from_numpy(rng.standard_normal(SHAPE).astype(np.float32))
            noises.append(noise.flatten().tolist())
        x = sched.step(model_output, t, x, variance_noise=noise).prev_sample
        samples.append(x.flatten().tolist())
    return {
        "timesteps": [int(t) for t in sched.timesteps],
        "sigmas": [float(s) for s in sched.sigmas],
        "samples": samples,
        "noises": noises,
    }


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(20261201)
    x_T = rng.standard_normal(SHAPE).astype(np.float32)
    cases = []
    for name, fields, prediction_type in CASES:
        fields = dict(fields)
        case = {"name": name, "prediction_type": prediction_type, "config": fields}
        case.update(run_case(fields, prediction_type, x_T, rng))
        cases.append(case)
    doc = {
        "about": "diffusers DPMSolverMultistepScheduler trajectories for model_output = a*x + b*t "
        "(scripts/make-dpm-solver-reference.py; linear betas 1e-4..0.02, T = 1000, float64 "
        "alphas_cumprod)",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "a": A,
        "b": B,
        "shape": SHAPE,
        "x_T": x_T.flatten().tolist(),
        "cases": cases,
    }
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.write("\n")
    os.replace(tmp, out)
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
