"""AV-MNIST-style paired demo data for OS-MD (recipes/osmd): a degraded digit scan and the same digit as sound.

AV-MNIST (Vielzeuf et al., 2018), the literature's standard missing-modality
test, pairs each handwritten digit image, degraded so that the image alone is
unsure, with the same digit spoken. Here, from the demo's sources
(unimodal/demo/mixture.py):

    png   a sklearn digit scan at 32x32, degraded: an occluding black square at a
          random place, optionally white noise; the ordinary modality
    wav   the same digit as sound (DTMF tone, or espeak-ng speech: `speech`, as the
          demo's), in noise; the privileged modality, written for training samples only
    txt   the digit word: the target, never an input
    json  {"label", "word"}

Layout:

    out_dir/train/avmnist-000000.tar, avmnist-000001.tar   png + wav + txt + json
    out_dir/test/avmnist-000000.tar                        png + txt + json (no sound)
    out_dir/<split>/index.json, out_dir/index.json         as the demo's

Test scans are held out of train (the demo's split). Every train scan is
written `copies` times, each with its own degradation and sound. The same
arguments write the same bytes.

    unimodal data avmnist data/avmnist [--scale 0.1] [--noise 0.1] [--occlusion 16] [--speech | --no-speech]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from unimodal.demo.mixture import (
    IMAGE_SIZE,
    TRAIN_SHARDS,
    WORDS,
    digit_scans,
    digit_sound,
    png,
    upscale,
    use_speech,
    write_shards,
)

PREFIX = "avmnist"
# Defaults: the tiny model's image-only accuracy about 0.5 (bench/RESULTS.md, OS-MD). Noise costs it far more than
# its information: the stems' per-patch LayerNorm scales a blank patch's noise up to a stroke's size.
NOISE, OCCLUSION, COPIES = 0.0, 16, 2


def degrade(scan: np.ndarray, rng: np.random.Generator, noise: float, occlusion: int) -> Image.Image:
    """The scan at 32x32 with a black `occlusion`-pixel square somewhere on it, plus white noise of std `noise` (of full range)."""
    image = np.asarray(upscale(scan, IMAGE_SIZE), dtype=np.float64)
    if occlusion:
        top, left = rng.integers(0, IMAGE_SIZE - occlusion + 1, size=2)
        image[top : top + occlusion, left : left + occlusion] = 0
    image = image + rng.normal(0, noise * 255, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8))


def paired_samples(
    scans, labels, rng: np.random.Generator, copies: int, sound: bool, noise: float, occlusion: int, speech: bool
):
    """Each scan `copies` times in a shuffled order: degraded image, the digit's sound (if `sound`; speech or not), the word."""
    order = rng.permutation(np.repeat(np.arange(len(scans)), copies))
    for i in order:
        label = int(labels[i])
        sample = {
            "png": png(degrade(scans[i], rng, noise, occlusion)),
            "txt": WORDS[label],
            "json": {"label": label, "word": WORDS[label]},
        }
        if sound:
            sample["wav"], _ = digit_sound(label, rng, speech)
        yield sample


def write_avmnist(
    out_dir: str | Path,
    *,
    scale: float = 1.0,
    seed: int = 0,
    noise: float = NOISE,
    occlusion: int = OCCLUSION,
    copies: int = COPIES,
    speech: bool | None = None,
) -> dict[str, int]:
    """Write the paired shards under `out_dir`; return {split: samples}. `scale` takes a fraction of the scans;
    `speech` as the demo's (`unimodal.demo.mixture.use_speech`)."""
    if not 0 <= occlusion <= IMAGE_SIZE:
        raise ValueError(f"occlusion {occlusion}: a square side in pixels, 0 to {IMAGE_SIZE}")
    if noise < 0 or copies < 1:
        raise ValueError(f"noise {noise} must be >= 0 and copies {copies} >= 1")
    out_dir = Path(out_dir)
    speech = use_speech(speech)
    counts = {}
    for split_id, (split, (scans, labels)) in enumerate(digit_scans(seed).items()):
        train = split == "train"
        n = max(TRAIN_SHARDS if train else 1, round(scale * len(scans)))
        rng = np.random.default_rng([seed, split_id, 7])
        n_copies = copies if train else 1
        samples = paired_samples(scans[:n], labels[:n], rng, n_copies, train, noise, occlusion, speech)
        counts[split] = write_shards(
            out_dir / split, PREFIX, split, samples, n * n_copies, TRAIN_SHARDS if train else 1
        )
    (out_dir / "index.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts
