"""Shards written the ecosystem's way: `.cls` class ids, and members gzipped one by one (`.txt.gz`, `.json.gz`).

ImageNet-style webdataset shards hold `<key>.cls` (the class id as text) beside
the image, and webdataset decodes `<key>.txt.gz` as text; a recipe reads
both as it reads `.txt`. A gzipped member that would expand past the limit
(a gzip bomb) is a bad sample: skipped and counted, never expanded.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SMOKE
from PIL import Image
from pydantic import ValidationError

from unimodal.commands.inspect import inspect_shards
from unimodal.config import DatasetConfig
from unimodal.data.decode import decode_example
from unimodal.data.loader import build_train_loader
from unimodal.data.stream import read_shard
from unimodal.fields import GUNZIP_LIMIT, gunzip
from unimodal.modalities import BadSample
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.recipe import load_recipe
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.sequence import collate
from unimodal.tokenize.text import BOS_ID

NAMES = ["zero", "one", "two", "three"]


def png(value: int) -> bytes:
    """A 16 x 16 grey square: its level says the class."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 40 + 60 * value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@functools.cache
def bomb() -> bytes:
    """A gzip member of ~70 KB that expands past GUNZIP_LIMIT."""
    pack = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    body = b"".join(pack.compress(chunk) for _ in range((GUNZIP_LIMIT >> 20) + 4))
    return body + pack.flush()


def write_shard(path: Path, n: int, bad: set[int] = frozenset()) -> None:
    """ImageNet-style samples (png, cls) with a gzipped caption and gzipped metadata; `bad` samples' txt.gz is a bomb."""
    with tarfile.open(path, "w") as tar:  # the bytes as given (webdataset's TarWriter would gzip *.gz values again)
        for i in range(n):
            c = i % len(NAMES)
            meta = gzip.compress(json.dumps({"label": NAMES[c]}).encode())
            caption = bomb() if i in bad else gzip.compress(f"a square of {NAMES[c]}".encode())
            for ext, data in (("png", png(c)), ("cls", str(c).encode()), ("txt.gz", caption), ("json.gz", meta)):
                info = tarfile.TarInfo(f"s{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def dataset(**fields) -> DatasetConfig:
    return DatasetConfig(
        **({"name": "squares", "task": "classify", "shards": "x.tar", "inputs": {"image": "png"}} | fields)
    )


def test_cls_and_gzipped_members_decode_and_a_class_id_is_written_as_its_name(in_workspace, tmp_path):
    write_shard(tmp_path / "s.tar", 4)
    raw = next(read_shard(str(tmp_path / "s.tar")))  # as training reads it
    recipe = load_recipe(SMOKE / "stage1.yaml")
    tok = recipe.tokenizer
    named = decode_example(raw, 0, dataset(target="cls", classes=NAMES), tok)
    assert named.target == "zero" and named.inputs["image"].shape == (16, 16, 3)
    assert decode_example(raw, 0, dataset(target="cls"), tok).target == "0"  # no classes: the id
    assert decode_example(raw, 0, dataset(target="txt"), tok).target == "a square of zero"  # txt.gz, read as txt
    assert decode_example(raw, 0, dataset(target="txt.gz"), tok).target == "a square of zero"  # or named
    assert decode_example(raw, 0, dataset(target="json.label"), tok).target == "zero"  # json.gz
    as_input = decode_example(raw, 0, dataset(inputs={"image": "png", "text": "cls"}, target="txt", classes=NAMES), tok)
    assert as_input.inputs["text"] == "zero"
    with pytest.raises(BadSample, match="class id not in classes"):
        decode_example(raw | {"cls": b"9"}, 0, dataset(target="cls", classes=NAMES), tok)
    with pytest.raises(ValidationError, match=r"classes: names the ids of \.cls fields"):
        dataset(target="txt", classes=NAMES)


def test_a_gzip_bomb_is_refused_without_expanding_it_and_skipped_and_counted(in_workspace, tmp_path):
    with pytest.raises(BadSample, match="gzip member too large"):
        gunzip(bomb())
    with pytest.raises(BadSample, match="undecodable gz"):
        gunzip(gzip.compress(b"caption")[:-12])  # cut short
    write_shard(tmp_path / "squares-000000.tar", 8, bad={3})
    report = inspect_shards([str(tmp_path / "squares-000000.tar")])
    assert report["fields"]["txt.gz"] == {"count": 8, "failed": 1} and report["not_decoded"] == {}
    assert report["fields"]["cls"] == {"count": 8, "failed": 0} and report["skip_reasons"] == {
        "gzip member too large": 1
    }

    raw = yaml.safe_load((SMOKE / "stage1.yaml").read_text())
    raw["data"].update(
        {"workers": 0, "max_bad_fraction": 0.5, "batch_tokens": 300, "pack_length": 128, "shuffle_buffer": 0}
    )
    raw["data"]["datasets"] = [
        {"name": "squares", "task": "caption", "shards": str(tmp_path / "squares-000000.tar"), "resample": False}
        | {"inputs": {"image": "png"}, "target": "txt"}
    ]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    skipped, keys = Counter(), []
    for batch, _ in zip(build_train_loader(load_recipe(tmp_path / "recipe.yaml"), 0), range(4)):
        skipped.update(batch["meta"]["skipped"])
        keys += batch["meta"]["keys"]
    assert skipped["squares/gzip member too large"] >= 1
    assert "squares/s003" not in keys and "squares/s002" in keys


def test_cls_targets_train(in_workspace, one_thread):
    """A tiny model learns to write a square's class name from its pixels: the loss falls."""
    recipe = load_recipe(SMOKE / "stage1.yaml")
    ds = dataset(target="cls", classes=NAMES)
    tokenizer = MultimodalTokenizer(recipe.tokenizer, [ds])
    tok = recipe.tokenizer
    raws = [{"__key__": f"s{c}", "png": png(c), "cls": str(c).encode()} for c in range(len(NAMES))]
    batch = collate([tokenizer(decode_example(raw, 0, ds, tok)) for raw in raws], tokenizer.patch_dims, BOS_ID)
    torch.manual_seed(0)
    model = UnifiedModel(ModelConfig.from_preset("tiny", tokenizer.vocab_size, tokenizer.patch_dims))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
