"""The streaming loader on real shards: epochs split over ranks and workers, resume, broken data."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from conftest import SMOKE, unimodal
from PIL import Image

from unimodal.data.index import write_index
from unimodal.data.ledger import SampleLedger
from unimodal.data.loader import MixedBatches, TooManyBadSamples, build_train_loader
from unimodal.data.stream import ShardStream
from unimodal.recipe import load_recipe

SHARDS, PER_SHARD = 8, 10


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(
    directory: Path, prefix: str, corrupt: set[str] = frozenset(), per_shard: int = PER_SHARD
) -> list[str]:
    """SHARDS shards of `per_shard` image-caption samples; keys in `corrupt` get bytes that are no PNG."""
    directory.mkdir(parents=True, exist_ok=True)
    keys, entries = [], []
    for s in range(SHARDS):
        path = directory / f"{prefix}-{s:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"{prefix}-{s}-{i}"
                sink.write(
                    {"__key__": key, "png": b"not a png" if key in corrupt else png(s * 100 + i), "txt": f"sample {i}"}
                )
                keys.append(key)
        entries.append({"name": path.name, "samples": per_shard, "bytes": path.stat().st_size})
    write_index(directory, entries)
    return keys


def image_recipe(tmp_path: Path, datasets: list[dict], **data) -> object:
    raw = yaml.safe_load((SMOKE / "stage1.yaml").read_text())
    raw["data"].update({"batch_tokens": 300, "pack_length": 128, "shuffle_buffer": 4, **data})
    raw["data"]["datasets"] = [
        {"name": "images", "task": "caption", "inputs": {"image": "png"}, "target": "txt", **ds} for ds in datasets
    ]
    raw["train"]["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def seen_by_epoch(loader, batches: int) -> dict[int, Counter]:
    out: dict[int, Counter] = {}
    for batch, _ in zip(loader, range(batches)):
        for key, epoch in zip(batch["meta"]["keys"], batch["meta"]["epochs"]):
            out.setdefault(epoch, Counter())[key.split("/", 1)[1]] += 1
    return out


def test_two_ranks_two_workers_see_every_key_once_per_epoch(in_workspace, tmp_path):
    keys = write_shards(tmp_path / "shards", "img")
    path = image_recipe(
        tmp_path, [{"shards": str(tmp_path / "shards/img-{000000..000007}.tar"), "resample": False}], workers=2
    )
    recipe = load_recipe(path)
    total: dict[int, Counter] = {}
    for rank in (0, 1):
        for epoch, counts in seen_by_epoch(build_train_loader(recipe, rank, world=2), 40).items():
            total.setdefault(epoch, Counter()).update(counts)
    for epoch in (0, 1, 2):
        assert sorted(total[epoch]) == sorted(keys), f"epoch {epoch}"
        assert set(total[epoch].values()) == {1}, f"epoch {epoch}: a key repeated"


def test_stop_and_resume_mid_epoch_neither_repeats_nor_skips(in_workspace, tmp_path):
    keys = write_shards(tmp_path / "shards", "img")
    path = image_recipe(
        tmp_path, [{"shards": str(tmp_path / "shards/img-{000000..000007}.tar"), "resample": False}], workers=2
    )
    recipe = load_recipe(path)
    uninterrupted = [b["meta"] for b, _ in zip(build_train_loader(recipe, 0), range(24))]

    first = build_train_loader(recipe, 0)
    it = iter(first)
    before = [next(it)["meta"] for _ in range(5)]  # mid-epoch: an epoch is ~10 batches here
    state = first.state_dict()
    second = build_train_loader(recipe, 0)
    second.load_state_dict(state)
    after = [b["meta"] for b, _ in zip(second, range(19))]

    assert before + after == uninterrupted
    epoch0 = Counter(k.split("/", 1)[1] for m in before + after for k, e in zip(m["keys"], m["epochs"]) if e == 0)
    assert sorted(epoch0) == sorted(keys) and set(epoch0.values()) == {1}


def test_after_a_topology_change_the_rest_of_the_epoch_comes_once_and_resumes_exactly(in_workspace, tmp_path):
    """4 loader slots consume part of epoch 0 (a broken sample among it), then 1 slot takes over from the
    ledger: the epoch's samples come once each, and a same-topology resume inside the leftovers is exact."""
    keys = write_shards(tmp_path / "shards", "img", corrupt={"img-3-1"}, per_shard=6)
    path = image_recipe(
        tmp_path, [{"shards": str(tmp_path / "shards/img-{000000..000007}.tar"), "resample": False}], workers=0
    )
    recipe = load_recipe(path)
    ledger, metas = SampleLedger(recipe.data.datasets), []
    for rank in range(4):  # 4 ranks x 0 workers: 4 slots, a batch each (of an epoch's ~10)
        metas.append(next(MixedBatches(recipe, rank, world=4))["meta"])
        ledger.add(metas[-1])
    assert sum(len(m["addrs"]) - len(m["keys"]) for m in metas) == 1  # the broken sample, consumed

    alone = MixedBatches(recipe, 0, world=1, accumulation=4)  # the global batch kept: 4 micro-batches a step
    alone.start_at(1, ledger)
    metas += [next(alone)["meta"] for _ in range(2)]
    state = alone.state_dict()  # a resume on this same topology, while the leftovers are being read
    rest = [next(alone)["meta"] for _ in range(12)]
    again = MixedBatches(recipe, 0, world=1, accumulation=4)
    again.load_state_dict(state)
    assert [next(again)["meta"] for _ in range(12)] == rest
    epoch0 = Counter(k.split("/", 1)[1] for m in metas + rest for k, e in zip(m["keys"], m["epochs"]) if e == 0)
    assert sorted(epoch0) == sorted(set(keys) - {"img-3-1"}) and set(epoch0.values()) == {1}
    assert [m["micro"] for m in metas[-2:] + rest] == list(range(4, 18))  # step 1 on: micro-batches 4, 5, ...


@pytest.mark.parametrize("seed", [0, 1, 6])
def test_every_epoch_stays_exactly_once_over_many_topology_changes(in_workspace, tmp_path, seed):
    """40 steps of 4 micro-batches on 1, 2 or 4 loader slots, the topology drawn anew every 1-8 steps, each
    change resuming from the ledger as the trainer does: no sample twice in an epoch, none of the first two
    epochs left out, and every global micro-batch once."""
    rnd = random.Random(seed)
    keys = {name: write_shards(tmp_path / name, name, per_shard=n) for name, n in (("a", 7), ("b", 4))}
    datasets = [
        {"name": n, "shards": str(tmp_path / n / f"{n}-{{000000..000007}}.tar"), "resample": False} for n in keys
    ]
    recipe = load_recipe(image_recipe(tmp_path, datasets, workers=0, shuffle_buffer=rnd.choice([0, 2, 5])))
    ledger, metas, step, topologies = SampleLedger(recipe.data.datasets), [], 0, []
    while step < 40:
        world, steps = rnd.choice([1, 2, 4]), rnd.randint(1, 8)
        slots = [MixedBatches(recipe, r, world, accumulation=4 // world) for r in range(world)]
        for batches in slots if step else []:
            batches.start_at(step, ledger)
        for _ in range(steps * 4 // world):
            for batches in slots:
                metas.append(next(batches)["meta"])
                ledger.add(metas[-1])
        ledger.load_state_dict(ledger.unite([ledger.state_dict()]))  # a checkpoint
        step, topologies = step + steps, [*topologies, world]
    assert len(set(topologies)) > 1, topologies
    trained = Counter((k, e) for m in metas for k, e in zip(m["keys"], m["epochs"]))
    assert max(trained.values()) == 1
    for name in keys:
        for epoch in (0, 1):
            assert {k.split("/", 1)[1] for k, e in trained if e == epoch and k.startswith(name)} == set(keys[name])
    assert sorted(m["micro"] for m in metas) == list(range(4 * step))


def test_pipe_urls_stream_like_local_paths(in_workspace, tmp_path):
    write_shards(tmp_path / "shards", "img")
    local = load_recipe(
        image_recipe(tmp_path, [{"shards": str(tmp_path / "shards/img-{000000..000007}.tar")}], workers=0)
    )
    piped = load_recipe(
        image_recipe(tmp_path, [{"shards": "pipe:cat " + str(tmp_path / "shards/img-{000000..000007}.tar")}], workers=0)
    )
    for a, b, _ in zip(build_train_loader(local, 0), build_train_loader(piped, 0), range(3)):
        assert a["meta"]["keys"] == b["meta"]["keys"]


def test_broken_shard_and_corrupt_png_are_skipped_and_counted(in_workspace, tmp_path, caplog):
    shards = tmp_path / "shards"
    write_shards(shards, "img", corrupt={"img-3-4"})
    whole = (shards / "img-000005.tar").read_bytes()
    (shards / "img-000005.tar").write_bytes(whole[: len(whole) // 2])  # truncated mid-way
    path = image_recipe(
        tmp_path,
        [{"shards": str(shards / "img-{000000..000007}.tar"), "resample": False}],
        workers=0,
        max_bad_fraction=0.2,
    )
    skipped, seen = Counter(), Counter()
    for batch, _ in zip(build_train_loader(load_recipe(path), 0), range(30)):
        skipped.update(batch["meta"]["skipped"])
        seen.update(e for e in batch["meta"]["epochs"])
    assert skipped["images/undecodable png"] >= 2  # once per epoch
    assert skipped["images/broken shard"] >= 2
    assert len(seen) >= 3  # the run went on, epoch after epoch
    assert "img-3-4" in caplog.text and "img-000005.tar" in caplog.text


def test_max_bad_fraction_stops_the_run_naming_the_dataset(in_workspace, tmp_path):
    bad_keys = {f"bad-{s}-{i}" for s in range(SHARDS) for i in range(PER_SHARD) if i % 2}
    write_shards(tmp_path / "shards", "good")
    write_shards(tmp_path / "shards", "bad", corrupt=bad_keys)
    datasets = [
        {"name": "good", "shards": str(tmp_path / "shards/good-{000000..000007}.tar")},
        {"name": "half-broken", "shards": str(tmp_path / "shards/bad-{000000..000007}.tar")},
    ]
    path = image_recipe(tmp_path, datasets, workers=1)
    with pytest.raises(TooManyBadSamples, match=r"dataset half-broken: .* over data.max_bad_fraction=0.01"):
        for _ in build_train_loader(load_recipe(path), 0):
            pass
    run = unimodal("train", str(path), "--nproc", "1", "--set", "train.steps=50", cwd=in_workspace)
    assert run.returncode != 0
    assert (
        "error: dataset half-broken: 50 of 101 samples read were skipped (undecodable png: 50)" in run.stderr
        and "max_bad_fraction" in run.stderr
    )


def test_epochs_need_a_shard_per_loader_slot(in_workspace, tmp_path):
    write_shards(tmp_path / "shards", "img")
    path = image_recipe(
        tmp_path, [{"shards": str(tmp_path / "shards/img-{000000..000007}.tar"), "resample": False}], workers=3
    )
    with pytest.raises(
        ValueError, match=r"\(images\): resample: false deals 8 shards over 4 ranks x 3 workers; it needs at least 12"
    ):
        build_train_loader(load_recipe(path), 0, world=4)


def test_resampled_streams_differ_per_slot_and_epoch_mode_needs_enough_shards():
    urls = [f"s{i}.tar" for i in range(8)]
    kw = dict(seed=1, resample=True, shuffle_buffer=0, on_broken=print)
    a, b = ShardStream(urls, slot=0, slots=4, **kw), ShardStream(urls, slot=1, slots=4, **kw)
    assert a.order(0) != b.order(0) and a.order(0) != a.order(1)
    assert a.order(3) == ShardStream(urls, slot=0, slots=4, **kw).order(3)  # deterministic
    with pytest.raises(ValueError, match="8 shards cannot be split over 16 loader slots"):
        ShardStream(urls, seed=1, slot=0, slots=16, resample=False, shuffle_buffer=0, on_broken=print)


def test_a_worker_hands_over_the_batches_built_inline(in_workspace, tmp_path):
    """Packed into one byte buffer in the worker and cut out again (transport.py): the same tensors."""
    write_shards(tmp_path / "shards", "img")
    shards = str(tmp_path / "shards/img-{000000..000007}.tar")
    inline = load_recipe(image_recipe(tmp_path, [{"shards": shards}], workers=0))
    worker = inline.model_copy(update={"data": inline.data.model_copy(update={"workers": 1})})
    for a, b, _ in zip(build_train_loader(inline, 0), build_train_loader(worker, 0), range(4)):
        assert a.keys() == b.keys() and a["meta"] == b["meta"]
        for key in a.keys() - {"meta"}:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


def test_a_process_exiting_with_live_workers_ends_them(in_workspace, tmp_path):
    """At interpreter exit multiprocessing terminates leftover workers with SIGTERM: they must go, not hang the exit."""
    write_shards(tmp_path / "shards", "img")
    path = image_recipe(tmp_path, [{"shards": str(tmp_path / "shards/img-{000000..000007}.tar")}], workers=1)
    script = (
        "import sys; from unimodal.recipe import load_recipe; from unimodal.data.loader import build_train_loader\n"
        "batches = iter(build_train_loader(load_recipe(sys.argv[1]), 0)); next(batches)\n"
        "import multiprocessing; assert multiprocessing.active_children()  # a worker is alive at exit\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
