#!/usr/bin/env python3
"""Background check for 28×28 grey samples: how many sit on a grey or speckled background.

Real MNIST backgrounds are black: in every MNIST-10k image (train and test) at least half of
the pixels are exactly 0, and bright specks apart from the strokes are rare. For each image
(8-bit levels, 0 = black) this script flags it

- grey:     its median level is above 16 (of 255): the background itself is grey;
- speckled: it has 3 or more specks, bright (> 48) 8-connected blobs of at most 4 pixels
            (strokes are far larger).

On the bundled data: 0 grey, speckled 0 of the 1,000 test and 2 of the 9,000 train images
(the rule's floor). Inputs are `trainer sample --npy` files (float32 in [-1, 1], shape
[n, 1, 28, 28], rounded to 8 bits as the PNG is) or gzipped IDX image files (the datasets'
own format), so real data runs through the same rule:

    python3 scripts/backgrounds.py crates/datasets/data/mnist10k/test-images-idx3-ubyte.gz
    trainer sample --class all --num 8 --guidance 3 --npy s.npy --out s.png
    python3 scripts/backgrounds.py s.npy --list

Clothes fill most of the frame, so for Fashion-MNIST `--frame` judges the background only
where it is: grey when the median level of the outer 2-pixel frame (208 pixels) is above 16;
speckled when it has 2 or more isolated specks (bright blobs of at most 4 pixels with nothing
but dark pixels, ≤ 16, around them: a print on a shirt is not isolated). On real data it flags
26 of the 10,000 Fashion-MNIST test images as grey and none as speckled (and 0 of the 1,000
MNIST-10k test digits); the whole-image rule above flags 47 % of those clothes.

    python3 scripts/backgrounds.py --frame /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

Standard library only.
"""

import argparse
import ast
import gzip
import struct
import sys
from array import array

SIZE = 28
GREY_MEDIAN = 16
SPECK_LEVEL = 48
SPECK_PIXELS = 4
SPECKLED = 3
# --frame: the outer FRAME pixels on each side, the level a dark pixel is at most, and how many
# isolated specks make an image speckled.
FRAME = 2
DARK = 16
ISOLATED = 2
FRAME_PIXELS = [y * SIZE + x for y in range(SIZE) for x in range(SIZE)
                if min(y, x, SIZE - 1 - y, SIZE - 1 - x) < FRAME]


def read_npy(path):
    """The images of a float32 .npy file as lists of 8-bit levels (trainer sample's rounding)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        sys.exit(f"{path}: not a .npy file")
    # Version 1 has a 2-byte header length, versions 2 and 3 a 4-byte one.
    size = 2 if data[6] == 1 else 4
    header_len = int.from_bytes(data[8:8 + size], "little")
    start = 8 + size + header_len
    header = ast.literal_eval(data[8 + size:start].decode("latin1"))
    if header["descr"] != "<f4" or header["fortran_order"]:
        sys.exit(f"{path}: expected little-endian float32 in C order, got {header}")
    shape = header["shape"]
    if len(shape) != 4 or shape[1] != 1 or shape[2:] != (SIZE, SIZE):
        sys.exit(f"{path}: expected shape [n, 1, 28, 28], got {list(shape)}")
    values = array("f")
    values.frombytes(data[start:])
    if sys.byteorder != "little":
        values.byteswap()
    per = SIZE * SIZE
    levels = [round((min(1.0, max(-1.0, v)) + 1.0) * 127.5) for v in values]
    return [levels[i * per:(i + 1) * per] for i in range(shape[0])]


def read_idx(path):
    """The images of a (gzipped) IDX3 file."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 2051 or (rows, cols) != (SIZE, SIZE):
        sys.exit(f"{path}: not an IDX file of 28×28 images")
    per = SIZE * SIZE
    return [list(data[16 + i * per:16 + (i + 1) * per]) for i in range(n)]


def neighbours(k):
    """The 8-connected neighbours of pixel k."""
    y, x = divmod(k, SIZE)
    for yy in (y - 1, y, y + 1):
        for xx in (x - 1, x, x + 1):
            if (yy, xx) != (y, x) and 0 <= yy < SIZE and 0 <= xx < SIZE:
                yield yy * SIZE + xx


def blobs(image):
    """The 8-connected blobs of pixels brighter than SPECK_LEVEL, as lists of pixel indices."""
    seen = set()
    found = []
    for start, level in enumerate(image):
        if level <= SPECK_LEVEL or start in seen:
            continue
        seen.add(start)
        stack, pixels = [start], []
        while stack:
            k = stack.pop()
            pixels.append(k)
            for n in neighbours(k):
                if image[n] > SPECK_LEVEL and n not in seen:
                    seen.add(n)
                    stack.append(n)
        found.append(pixels)
    return found


def isolated(image, pixels):
    """Whether every pixel around a blob is dark."""
    inside = set(pixels)
    return all(image[n] <= DARK for k in pixels for n in neighbours(k) if n not in inside)


def check(image, frame=False):
    """(median level, specks, grey?, speckled?) by the whole-image rule, or by the frame rule."""
    specks = [b for b in blobs(image) if len(b) <= SPECK_PIXELS]
    if frame:
        levels = sorted(image[k] for k in FRAME_PIXELS)
        median = levels[len(levels) // 2]
        n = sum(1 for b in specks if isolated(image, b))
        return median, n, median > GREY_MEDIAN, n >= ISOLATED
    median = sorted(image)[len(image) // 2]
    return median, len(specks), median > GREY_MEDIAN, len(specks) >= SPECKLED


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help=".npy samples or IDX image files")
    p.add_argument("--list", action="store_true", help="print every flagged image")
    p.add_argument("--frame", action="store_true",
                   help="judge the outer frame and isolated specks only (clothes: Fashion-MNIST)")
    a = p.parse_args()
    for path in a.files:
        images = read_npy(path) if path.endswith(".npy") else read_idx(path)
        grey = speckled = 0
        flagged = []
        for i, image in enumerate(images):
            median, specks, g, s = check(image, a.frame)
            grey += g
            speckled += s
            if g or s:
                flagged.append((i, median, specks))
        print(f"{path}: {len(images)} images, {grey} grey, {speckled} speckled, "
              f"{len(flagged)} flagged ({100 * len(flagged) / max(1, len(images)):.1f} %)")
        if a.list:
            for i, median, specks in flagged:
                what = "frame median" if a.frame else "median"
                print(f"  image {i}: {what} level {median}/255, {specks} specks")


if __name__ == "__main__":
    main()
