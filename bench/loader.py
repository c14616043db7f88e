#!/usr/bin/env python
"""Loader throughput per modality: the full training pipeline next to a bare decode loop.

For each modality (image, audio, video, text) and each worker count, these
loops read the same shards in the same number of DataLoader worker processes,
with the same prefetch depth and the same number of samples per batch:

  full  `unimodal.data.loader.build_train_loader` on a one-dataset recipe made
        from recipes/smoke/stage2.yaml: read shard (unimodal/data/tar.py), shuffle buffer, decode
        (JPEG by libjpeg-turbo through simplejpeg, straight into an array;
        soundfile; PyAV), then the tokenizer (image resized to the
        recipe's size and cut into 16x16 uint8 patches, audio log-mel
        patches, video tubelets, SentencePiece for text and targets),
        token-budget packed batches, collate, tensor handover from the worker
        (the batch's small tensors merged into one byte buffer).
  bare  tarfile + Pillow / soundfile / PyAV (the issue's baseline) and nothing else: each sample's
        media decoded to an array (the image as stored; the waveform; every
        video frame) plus its target text, batched by torch's default_collate
        and handed over the same way.
  bare+resize  (image, when the recipe's size differs from the stored one) the
        bare loop plus the recipe's resize, the same call the tokenizer makes:
        work the full pipeline must do and the bare loop skips.

Images are stored at 256x256 (--image-stored), as img2dataset writes them by
default, and the recipe trains at 224 (--image-size). Stored images at least
twice the recipe's size are decoded at reduced scale (JPEG DCT scaling), which
the bare loop does not do: `--image-stored 512` shows that case.

full/bare is the share of decode-only throughput that the pipeline keeps; the
difference is what the pipeline adds (resize, patchify, log-mel,
SentencePiece, mixing and shuffle bookkeeping, packing, collate, the loader
state sent with every batch). With --repeats N the loops alternate N times and
each keeps its best run (load from other jobs only ever slows a run down).

Shards are written as webdataset's ShardWriter writes them, with a pax header
(its fractional mtime) before every member, as img2dataset's and most users'
shards have; the bare loop's tarfile parses those at ~120 us a member, the
pipeline's own tar reader at ~5 us (unimodal/data/tar.py). `--tar ustar`
writes plain ustar headers instead (integer mtimes, as `unimodal shards
write` does), which halve tarfile's share. Shards are written into a
temporary folder on every run (or --data DIR, kept and reused): JPEG crops of the two photos shipped with scikit-learn,
4 s 16 kHz WAV, 16-frame 128x128 H.264 MP4 (camera pans over the photos),
and text captions. A SentencePiece model is trained on their text.

    .venv/bin/python bench/loader.py                    # 1 and 2 workers, ~3 min on 2 cores
    .venv/bin/python bench/loader.py --quick            # seconds: a smoke run
    .venv/bin/python bench/loader.py --modalities image --workers 1 --repeats 3
    .venv/bin/python bench/loader.py --profile image    # cProfile of the full pipeline, workers=0

The last line of stdout is one JSON object: `<m>_ratio` (full/bare samples/s
at 1 worker), `<m>_samples_per_s`, `<m>_tokens_per_s`, `<m>_bare_samples_per_s`
(1 worker) and `<m>_w<N>_...` for every worker count measured. Tokens are the
real encoder tokens plus target tokens (padding excluded).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import math
import os
import pstats
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
import webdataset as wds
import yaml
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unimodal.config import Recipe, expand_shards  # noqa: E402
from unimodal.data.loader import PREFETCH, build_train_loader  # noqa: E402  (the bare loop prefetches as deep)
from unimodal.modalities import modalities  # noqa: E402
from unimodal.modalities.image import resize_pixels  # noqa: E402
from unimodal.recipe import load_recipe, read_yaml  # noqa: E402
from unimodal.tokenize.sequence import IGNORE_INDEX  # noqa: E402
from unimodal.tokenize.text import shard_texts, train_text_tokenizer  # noqa: E402

MODALITIES = tuple(m.name for m in modalities())  # the registry's, each with its sample maker below
STAGE2 = REPO / "recipes" / "smoke" / "stage2.yaml"

IMAGE_STORED, IMAGE_SIZE, IMAGE_PATCH = 256, 224, 16  # img2dataset-style 256 shards, a 224 model
AUDIO_RATE, AUDIO_SECONDS = 16_000, 4.0
VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS = 16, 128, 8
MEDIA_EXT = {m.name: m.extensions[0] for m in modalities()}  # jpg, wav, mp4, txt
TARGET = {"image": "txt", "audio": "txt", "video": "txt", "text": "json.title"}

# samples written (over SHARDS shards) and timed per measurement (~5-10 s each on 2 cores)
SHARDS = 4
WRITE = {"image": 512, "audio": 256, "video": 128, "text": 4096}
TIMED = {"image": 3000, "audio": 3000, "video": 400, "text": 20000}
QUICK_WRITE = {"image": 24, "audio": 16, "video": 8, "text": 64}
QUICK_TIMED = {"image": 40, "audio": 40, "video": 8, "text": 200}

WORDS = {
    "adj": [
        "red",
        "small",
        "old",
        "bright",
        "dark",
        "wooden",
        "tall",
        "quiet",
        "busy",
        "green",
        "white",
        "narrow",
        "wide",
        "ancient",
        "modern",
    ],
    "noun": [
        "temple",
        "flower",
        "garden",
        "roof",
        "tree",
        "path",
        "wall",
        "sky",
        "lantern",
        "bridge",
        "petal",
        "stone",
        "tower",
        "leaf",
        "river",
    ],
    "verb": ["stands", "grows", "leans", "rises", "sits", "glows", "hangs", "opens", "waits", "shines"],
    "prep": ["near", "under", "behind", "beside", "above", "across", "before"],
}


# ---------------------------------------------------------------- shards


def caption(rng: np.random.Generator, clauses: int) -> str:
    w = {k: v[rng.integers(len(v))] for k, v in WORDS.items()}
    parts = [f"a {w['adj']} {w['noun']} {w['verb']} {w['prep']} the {WORDS['noun'][rng.integers(15)]}"]
    for _ in range(clauses - 1):
        a, n, p = (WORDS[k][rng.integers(len(WORDS[k]))] for k in ("adj", "noun", "prep"))
        parts.append(f"{p} a {a} {n}")
    return " ".join(parts)


def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)  # two real 427x640 photos, shipped with sklearn


def image_samples(n: int, rng: np.random.Generator, stored: int = IMAGE_STORED):
    pics = photos()
    for _ in range(n):
        pic = pics[rng.integers(len(pics))]
        side = int(rng.integers(160, pic.shape[0] + 1))
        top, left = (int(rng.integers(0, d - side + 1)) for d in pic.shape[:2])
        img = Image.fromarray(pic[top : top + side, left : left + side]).resize(
            (stored, stored), Image.Resampling.BICUBIC
        )
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        yield {"jpg": buf.getvalue(), "txt": caption(rng, int(rng.integers(1, 4)))}


def audio_samples(n: int, rng: np.random.Generator):
    t = np.arange(int(AUDIO_RATE * AUDIO_SECONDS)) / AUDIO_RATE
    for _ in range(n):
        wave = rng.normal(0, rng.uniform(0.005, 0.05), t.shape)
        for _ in range(int(rng.integers(2, 6))):  # tones and chirps at random times
            onset, length = rng.uniform(0, AUDIO_SECONDS - 0.3), rng.uniform(0.2, 1.5)
            f0, f1 = rng.uniform(120, 3500, size=2)
            env = np.clip(np.minimum(t - onset, onset + length - t) / 0.01, 0, 1)
            wave += rng.uniform(0.05, 0.3) * env * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / 8) * t)
        buf = io.BytesIO()
        soundfile.write(buf, np.clip(wave, -1, 1), AUDIO_RATE, format="WAV", subtype="PCM_16")
        yield {"wav": buf.getvalue(), "txt": caption(rng, 1)}


def video_samples(n: int, rng: np.random.Generator):
    pics = [np.asarray(Image.fromarray(p).resize((384, 256), Image.Resampling.BILINEAR)) for p in photos()]
    for _ in range(n):
        pic = pics[rng.integers(len(pics))]
        y, x = int(rng.integers(0, 256 - VIDEO_SIZE)), int(rng.integers(0, 384 - VIDEO_SIZE))
        dy, dx = (int(rng.integers(-4, 5)) for _ in range(2))
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=VIDEO_FPS, options={"preset": "veryfast"})
            stream.width = stream.height = VIDEO_SIZE
            stream.pix_fmt = "yuv420p"
            for i in range(VIDEO_FRAMES):  # a camera panning over the photo
                top = int(np.clip(y + dy * i, 0, 256 - VIDEO_SIZE))
                lft = int(np.clip(x + dx * i, 0, 384 - VIDEO_SIZE))
                frame = np.ascontiguousarray(pic[top : top + VIDEO_SIZE, lft : lft + VIDEO_SIZE])
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(stream.encode())
        yield {"mp4": buf.getvalue(), "txt": caption(rng, 1)}


def text_samples(n: int, rng: np.random.Generator):
    for _ in range(n):
        text = caption(rng, int(rng.integers(2, 6)))
        yield {"txt": text, "json": {"title": " ".join(text.split()[: int(rng.integers(3, 7))])}}


def write_shards(
    root: Path, quick: bool, image_stored: int = IMAGE_STORED, tar: str = "webdataset", seed: int = 0
) -> dict[str, str]:
    """Shards for every modality under root/shards (reused when already there); {modality: pattern}."""
    counts = QUICK_WRITE if quick else WRITE
    shards = 2 if quick else SHARDS
    makers = {
        "image": functools.partial(image_samples, stored=image_stored),
        "audio": audio_samples,
        "video": video_samples,
        "text": text_samples,
    }
    patterns = {}
    for k, m in enumerate(MODALITIES):
        folder = root / ("shards" if tar == "webdataset" else f"shards-{tar}")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"image{image_stored}" if m == "image" else m
        patterns[m] = str(folder / f"{name}-{{000000..{shards - 1:06d}}}.tar")
        done = folder / f"{name}.done"
        if done.exists() and done.read_text() == f"{counts[m]} {shards}":
            continue
        rng = np.random.default_rng([seed, k])
        per = math.ceil(counts[m] / shards)
        mtime = {"mtime": 0} if tar == "ustar" else {}  # webdataset's default: time.time(), a pax header each
        with wds.ShardWriter(str(folder / f"{name}-%06d.tar"), maxcount=per, verbose=0, **mtime) as sink:
            for i, sample in enumerate(makers[m](counts[m], rng)):
                sink.write({"__key__": f"{name}-{i:06d}", **sample})
        done.write_text(f"{counts[m]} {shards}")
    return patterns


# ---------------------------------------------------------------- the loops


def make_recipe(
    root: Path, modality: str, pattern: str, sp: Path, workers: int, batch_tokens: int, image_size: int
) -> Recipe:
    """recipes/smoke/stage2.yaml reduced to its `modality` dataset, at realistic media sizes."""
    raw = read_yaml(STAGE2)
    ds = next(d for d in raw["data"]["datasets"] if modality in d["inputs"])
    ds.pop("eval_shards", None)
    ds.update(shards=pattern, inputs={modality: MEDIA_EXT[modality]}, target=TARGET[modality], weight=1.0)
    raw.update(name=f"bench-loader-{modality}", init_from=None)
    tok = raw["tokenizer"]
    tok["text"] = str(sp)
    tok["image"] = {"size": image_size, "patch": IMAGE_PATCH}
    tok["audio"] = {**tok.get("audio", {}), "sample_rate": AUDIO_RATE, "seconds": AUDIO_SECONDS}
    tok["video"] = {"frames": VIDEO_FRAMES, "size": VIDEO_SIZE, "patch": 16, "tubelet": 2}
    raw["data"].update(workers=workers, batch_tokens=batch_tokens, pack_length=batch_tokens // 4, datasets=[ds])
    raw["train"]["output_dir"] = str(root / "runs")
    path = root / f"{modality}-w{workers}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_recipe(path)  # the real validation path, shard and tokenizer checks included


def full_loader(recipe: Recipe):
    return build_train_loader(recipe, 0, world=1)


def count_full(batch) -> tuple[int, int]:
    tokens = int(batch["enc_mask"].sum()) + int((batch["dec_out"] != IGNORE_INDEX).sum())
    return len(batch["dataset"]), tokens


def count_bare(batch) -> tuple[int, int]:
    return len(batch[1]), 0


class BareDecode(IterableDataset):
    """tarfile + Pillow / soundfile / PyAV: every sample decoded to arrays, nothing more."""

    def __init__(self, urls: list[str], modality: str, resize: int | None = None, seed: int = 0):
        self.urls, self.modality, self.resize, self.seed = urls, modality, resize, seed

    def __iter__(self):
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:  # endless, each worker its own shard order, like the resampled stream
            for i in rng.permutation(len(self.urls)):
                for fields in self._samples(self.urls[i]):
                    yield self._decode(fields)

    @staticmethod
    def _samples(url: str):
        """{ext: bytes} per sample; members of one sample share the basename before the first dot."""
        with tarfile.open(url, "r|") as tar:
            key, fields = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                name = os.path.basename(member.name)
                k, _, ext = name.partition(".")
                if k != key and fields:
                    yield fields
                    fields = {}
                key = k
                fields[ext] = tar.extractfile(member).read()
            if fields:
                yield fields

    def _decode(self, f: dict[str, bytes]):
        m = self.modality
        if m == "image":
            img = Image.open(io.BytesIO(f["jpg"])).convert("RGB")
            pixels = torch.from_numpy(np.array(img))
            if self.resize:  # the "bare+resize" loop: plus the recipe's resize, the same call the tokenizer makes
                pixels = resize_pixels(pixels, self.resize)
            return pixels, f["txt"].decode("utf-8").strip()
        if m == "audio":
            return soundfile.read(io.BytesIO(f["wav"]), dtype="float32")[0], f["txt"].decode("utf-8").strip()
        if m == "video":
            with av.open(io.BytesIO(f["mp4"])) as container:
                frames = np.stack([fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)])
            return frames, f["txt"].decode("utf-8").strip()
        return f["txt"].decode("utf-8").strip(), str(json.loads(f["json"])["title"])


def bare_loader(urls: list[str], modality: str, workers: int, batch: int, resize: int | None = None) -> DataLoader:
    return DataLoader(
        BareDecode(urls, modality, resize),
        batch_size=batch,
        num_workers=workers,
        prefetch_factor=PREFETCH if workers else None,
        persistent_workers=False,
    )


def timed(loader, count, samples: int, workers: int, warm_seconds: float) -> dict[str, float]:
    """Drain the start-up prefetch, run warm, then time `samples` samples."""
    if workers == 0:
        torch.set_num_threads(1)  # as in a DataLoader worker
    it = iter(loader)
    batches, start = 0, None
    while True:
        next(it)
        batches += 1
        start = start or time.perf_counter()
        if batches >= PREFETCH * workers + 2 and time.perf_counter() - start >= warm_seconds:
            break
    n = tokens = batches = 0
    t0 = time.perf_counter()
    while n < samples:
        s, t = count(next(it))
        n, tokens, batches = n + s, tokens + t, batches + 1
    seconds = time.perf_counter() - t0
    del it  # shuts the workers down
    return {"samples": n, "tokens": tokens, "seconds": seconds, "batch": n / batches}


# ---------------------------------------------------------------- main


def profile(args, root: Path, patterns: dict[str, str], sp: Path, budgets: dict[str, int]) -> None:
    """cProfile of the full pipeline in this process (workers=0, one torch thread like a worker)."""
    torch.set_num_threads(1)
    m = args.profile
    recipe = make_recipe(root, m, patterns[m], sp, 0, budgets[m], args.image_size)
    n = args.samples or (QUICK_TIMED if args.quick else TIMED)[m] // 4
    it = iter(full_loader(recipe))
    next(it)
    prof = cProfile.Profile()
    done, t0 = 0, time.perf_counter()
    prof.enable()
    while done < n:
        done += count_full(next(it))[0]
    prof.disable()
    full = done / (time.perf_counter() - t0)
    bare_it = iter(bare_loader(expand_shards(patterns[m]), m, 0, 16))
    next(bare_it)
    done, t0 = 0, time.perf_counter()
    while done < n:
        done += count_bare(next(bare_it))[0]
    bare = done / (time.perf_counter() - t0)
    print(f"{m}, workers=0: full {full:.1f} samples/s (under cProfile), bare {bare:.1f} samples/s\n")
    pstats.Stats(prof, stream=sys.stdout).sort_stats(args.sort).print_stats(args.top)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, help="samples timed per measurement (default: per modality, ~5-10 s)")
    ap.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts (default 1,2)")
    ap.add_argument("--modalities", default=",".join(MODALITIES))
    ap.add_argument("--repeats", type=int, default=1, help="alternate the loops this many times, keep each one's best")
    ap.add_argument(
        "--batch-tokens", type=int, default=4096, help="recipe data.batch_tokens (default: DataConfig's 4096)"
    )
    ap.add_argument(
        "--image-size",
        type=int,
        default=IMAGE_SIZE,
        help="recipe image size (another than --image-stored: the loader resizes)",
    )
    ap.add_argument("--image-stored", type=int, default=IMAGE_STORED, help="side of the stored JPEGs")
    ap.add_argument(
        "--tar",
        choices=("webdataset", "ustar"),
        default="webdataset",
        help="shard headers: webdataset's ShardWriter's (a pax header a member) or plain ustar",
    )
    ap.add_argument("--quick", action="store_true", help="tiny shards and counts, 1 worker: a smoke run")
    ap.add_argument("--data", type=Path, help="keep shards and tokenizer here (reused next time)")
    ap.add_argument("--profile", choices=MODALITIES, help="cProfile the full pipeline at workers=0 instead")
    ap.add_argument("--sort", default="tottime", help="with --profile: pstats sort key (tottime, cumulative)")
    ap.add_argument("--top", type=int, default=25, help="with --profile: rows shown")
    args = ap.parse_args(argv)
    if args.quick and args.workers == "1,2":
        args.workers = "1"
    workers = [int(w) for w in args.workers.split(",")]
    modalities = [m for m in args.modalities.split(",") if m]
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # bare: read-only PIL views

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        root = args.data or Path(tmp)
        t0 = time.perf_counter()
        patterns = write_shards(root, args.quick, args.image_stored, args.tar)
        sp = root / "tokenizer" / "sp.model"
        if not sp.exists():
            train_text_tokenizer(
                shard_texts(list(patterns.values())), sp.parent, vocab_size=256 if args.quick else 1024
            )
        print(f"shards and tokenizer in {root} ({time.perf_counter() - t0:.1f} s)", flush=True)
        budgets = {m: args.batch_tokens for m in MODALITIES}
        if args.profile:
            profile(args, root, patterns, sp, budgets)
            return {}

        rows, out = [], {"bench": "loader", "device": f"cpu, {os.cpu_count()} cores", "workers": workers}
        out["tar"] = args.tar
        out["loadavg_start"] = round(os.getloadavg()[0], 2)  # other jobs on the machine: noise
        print(
            f"{'modality':8} {'workers':>7} {'batch':>5} {'tokens':>6} {'full samples/s':>14} {'full tokens/s':>13}"
            f" {'bare samples/s':>14} {'full/bare':>9} {'bare+resize/s':>13} {'full/(b+r)':>10}",
            flush=True,
        )
        for m in modalities:
            samples = args.samples or (QUICK_TIMED if args.quick else TIMED)[m]
            urls = expand_shards(patterns[m])
            warm = 0.0 if args.quick else 1.0
            for w in workers:
                recipe = make_recipe(root, m, patterns[m], sp, w, budgets[m], args.image_size)
                runs: dict[str, list[dict[str, float]]] = {"full": [], "bare": [], "bare_resize": []}
                for _ in range(args.repeats):  # alternated, so that load from elsewhere hits all alike
                    runs["full"].append(timed(full_loader(recipe), count_full, samples, w, warm))
                    batch = max(1, round(runs["full"][0]["batch"]))  # the bare loop batches as many samples
                    runs["bare"].append(timed(bare_loader(urls, m, w, batch), count_bare, samples, w, warm))
                    if m == "image" and args.image_size != args.image_stored:
                        loader = bare_loader(urls, m, w, batch, resize=args.image_size)
                        runs["bare_resize"].append(timed(loader, count_bare, samples, w, warm))
                best = {k: max(v, key=lambda r: r["samples"] / r["seconds"]) for k, v in runs.items() if v}
                rate = {k: r["samples"] / r["seconds"] for k, r in best.items()}
                f = best["full"]
                row = {
                    "full_samples_per_s": round(rate["full"], 2),
                    "full_tokens_per_s": round(f["tokens"] / f["seconds"], 1),
                    "bare_samples_per_s": round(rate["bare"], 2),
                    "ratio": round(rate["full"] / rate["bare"], 3),
                    "batch": round(f["batch"], 1),
                    "tokens_per_sample": round(f["tokens"] / f["samples"], 1),
                    "samples_timed": f["samples"],
                    "full_seconds": round(f["seconds"], 2),
                    "bare_seconds": round(best["bare"]["seconds"], 2),
                }
                if "bare_resize" in rate:
                    row["bare_resize_samples_per_s"] = round(rate["bare_resize"], 2)
                    row["ratio_vs_bare_resize"] = round(rate["full"] / rate["bare_resize"], 3)
                for k in (
                    "full_samples_per_s",
                    "full_tokens_per_s",
                    "bare_samples_per_s",
                    "ratio",
                    "ratio_vs_bare_resize",
                ):
                    if k in row:
                        out[f"{m}_w{w}_{k}"] = row[k]
                rows.append((m, w, row))
                resized = (
                    f"{row['bare_resize_samples_per_s']:>13.1f} {row['ratio_vs_bare_resize']:>10.2f}"
                    if "bare_resize_samples_per_s" in row
                    else f"{'-':>13} {'-':>10}"
                )
                print(
                    f"{m:8} {w:>7} {row['batch']:>5} {row['tokens_per_sample']:>6.0f} {rate['full']:>14.1f}"
                    f" {row['full_tokens_per_s']:>13.0f} {rate['bare']:>14.1f} {row['ratio']:>9.2f} {resized}",
                    flush=True,
                )
            head = next((r for mm, w, r in rows if mm == m and w == 1), None) or next(r for mm, _, r in rows if mm == m)
            out[f"{m}_ratio"] = head["ratio"]
            out[f"{m}_samples_per_s"] = head["full_samples_per_s"]
            out[f"{m}_tokens_per_s"] = head["full_tokens_per_s"]
            out[f"{m}_bare_samples_per_s"] = head["bare_samples_per_s"]
            if "ratio_vs_bare_resize" in head:
                out[f"{m}_ratio_vs_bare_resize"] = head["ratio_vs_bare_resize"]
        out["ratio_workers"] = 1 if 1 in workers else workers[0]
        out["loadavg_end"] = round(os.getloadavg()[0], 2)
        print(
            f"load average (1 min) {out['loadavg_start']} at start, {out['loadavg_end']} at end;"
            f" this machine has {os.cpu_count()} cores"
        )
        out["rows"] = {f"{m}_w{w}": r for m, w, r in rows}
        print(json.dumps(out))
        return out


if __name__ == "__main__":
    main()
