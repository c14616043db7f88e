"""A shifted version of the demo's digit scans, for contrastive adaptation (recipes/adapt).

The same scans and captions as the demo's image shards, but each scan
inverted (white digit on black becomes black on white) and covered in
Gaussian pixel noise: a domain the pretrained encoder never saw, paired with
text it knows. Train and test use the demo's own split, so the test scans
are held out of both the demo's and this training set. The same seed writes
the same bytes.

    out_dir/train/image-000000.tar, image-000001.tar
    out_dir/test/image-000000.tar
    out_dir/<split>/index.json, out_dir/index.json

    unimodal data shifted data/demo-shifted [--scale 1.0] [--noise 16]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unimodal.demo.mixture import IMAGE_SIZE, SPLITS, TRAIN_SHARDS, digit_scans, image_samples, upscale, write_shards


def shift(scan: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 [32, 32]: the scan at the demo's size, inverted, plus N(0, noise) per pixel, clipped."""
    inverted = 255.0 - np.asarray(upscale(scan, IMAGE_SIZE), dtype=np.float64)
    return np.clip(inverted + rng.normal(0.0, noise, inverted.shape), 0, 255).round().astype(np.uint8)


def write_shifted(out_dir: str | Path, *, scale: float = 1.0, seed: int = 0, noise: float = 16.0) -> dict[str, int]:
    """Write the shifted digit shards under `out_dir`; return {split: samples}."""
    out_dir = Path(out_dir)
    digits = digit_scans(seed)
    counts = {}
    for split in SPLITS:
        least = TRAIN_SHARDS if split == "train" else 1
        n = max(least, round(scale * len(digits[split][1])))
        scans, labels = (array[:n] for array in digits[split])
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        shifted = np.stack([shift(s, noise, rng) for s in scans])
        # already at IMAGE_SIZE: the demo's upscale leaves them as they are
        samples = image_samples(shifted, labels)
        counts[split] = write_shards(out_dir / split, "image", split, samples, n, least)
    (out_dir / "index.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts
