"""Shards written by webdataset's own ShardWriter load unchanged; loader positions resume exactly."""

from __future__ import annotations

import io
import json
import pickle

import av
import numpy as np
import soundfile
import torch
import webdataset as wds
import yaml
from conftest import SMOKE
from PIL import Image

from unimodal.data.decode import decode_example
from unimodal.data.loader import build_train_loader
from unimodal.data.stream import eval_samples
from unimodal.recipe import load_recipe


class Boom:
    """Unpickling this creates a file: proof that a shard's pickle ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def mp4_bytes(frames: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def test_shardwriter_shards_load_unchanged(in_workspace, tmp_path, monkeypatch):
    monkeypatch.delenv("WDS_SECURE", raising=False)  # webdataset's own decoders would unpickle now
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    wave = (0.3 * np.sin(np.linspace(0, 800 * np.pi, 16000))).astype(np.float32)
    frames = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    for t in range(8):
        frames[t, 8:24, 4 + 2 * t : 12 + 2 * t] = 255
    png, wav = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    soundfile.write(wav, wave, 16000, format="WAV", subtype="FLOAT")
    sentinel = tmp_path / "pwned"
    with wds.ShardWriter(str(tmp_path / "own-%06d.tar"), maxcount=10) as sink:
        sink.write(
            {
                "__key__": "sample0",
                "png": png.getvalue(),
                "wav": wav.getvalue(),
                "mp4": mp4_bytes(frames),
                "txt": "a square moves right",
                "json": json.dumps({"answer": {"text": "right"}}).encode(),
                "pyd": pickle.dumps(Boom(str(sentinel))),
            }
        )
    raw = yaml.safe_load((SMOKE / "stage2.yaml").read_text())
    raw["data"]["datasets"] = [
        {
            "name": "own",
            "task": "describe",
            "shards": str(tmp_path / "own-000000.tar"),
            "inputs": {"image": "png", "audio": "wav", "video": "mp4", "text": "txt"},
            "target": "json.answer.text",
        }
    ]
    raw.pop("init_from")
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(path)

    sample = next(eval_samples([str(tmp_path / "own-000000.tar")]))
    assert isinstance(sample["pyd"], bytes)  # carried as bytes, never unpickled
    ex = decode_example(sample, 0, recipe.data.datasets[0], recipe.tokenizer)
    assert np.array_equal(np.asarray(ex.inputs["image"]), image)
    assert torch.allclose(ex.inputs["audio"], torch.from_numpy(wave))
    video = ex.inputs["video"]
    assert video.shape == (8, 32, 32, 3)
    centres = [np.nonzero(f.mean(axis=(0, 2)) > 60)[0].mean() for f in video]
    assert centres[-1] - centres[0] > 8  # the square moved right, frames in order
    assert ex.inputs["text"] == "a square moves right" and ex.target == "right"

    batch = next(iter(build_train_loader(recipe, rank=0)))  # the one sample, resampled up to the budget
    n = len(batch["dataset"])
    assert batch["patches_image"].shape == (16 * n, 192)
    assert batch["patches_video"].shape == (64 * n, 384)
    assert not sentinel.exists()


def test_loader_resumes_exactly_where_it_stopped(in_workspace):
    for workers in (0, 1):
        recipe = load_recipe(SMOKE / "stage2.yaml", [f"data.workers={workers}", "data.batch_tokens=1024"])
        it = iter(build_train_loader(recipe, rank=1))
        uninterrupted = [next(it) for _ in range(12)]
        first = build_train_loader(recipe, rank=1)
        it = iter(first)
        for _ in range(7):
            next(it)
        state = first.state_dict()
        second = build_train_loader(recipe, rank=1)
        second.load_state_dict(state)
        resumed = [b for b, _ in zip(second, range(5))]
        for a, b in zip(uninterrupted[7:], resumed):
            assert a.pop("meta") == b.pop("meta")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batches_respect_the_token_budget_and_mix_tasks(in_workspace):
    recipe = load_recipe(SMOKE / "stage2.yaml", ["data.workers=0", "data.batch_tokens=1500"])
    seen = torch.zeros(4)
    for batch, _ in zip(build_train_loader(recipe, rank=0), range(20)):
        b, enc = batch["enc_mask"].shape
        assert b == 1 or b * (enc + batch["dec_out"].shape[1]) <= 1500
        seen += torch.bincount(batch["dataset"], minlength=4)
    share = seen / seen.sum()
    assert torch.allclose(share, torch.tensor([1 / 6, 1 / 6, 1 / 3, 1 / 3]), atol=0.07)


def test_packing_wastes_far_less_than_padding(in_workspace):
    def efficiency(pack_length):
        recipe = load_recipe(SMOKE / "stage2.yaml", ["data.workers=0", f"data.pack_length={pack_length}"])
        real = computed = 0
        for batch, _ in zip(build_train_loader(recipe, rank=0), range(5)):  # 0.98 and 0.63 from the first 5 on
            assert batch["enc_mask"].numel() + batch["dec_out"].numel() <= recipe.data.batch_tokens
            real += int(batch["enc_mask"].sum() + (batch["dec_out"] != -100).sum())
            computed += batch["enc_mask"].numel() + batch["dec_out"].numel()
        return real / computed

    packed, padded = efficiency(512), efficiency("null")
    assert packed > 0.93 and padded < 0.75  # bench/packing.py measures it over more batches
