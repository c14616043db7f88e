"""`unimodal shards write` and `unimodal data inspect`: byte-exact round trips, refusals, reports."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import webdataset as wds
from conftest import unimodal
from PIL import Image
from test_data import Boom

from unimodal.cli import main
from unimodal.data.stream import read_shard
from unimodal.data.write import Sample, ShardWriteError, size_in_bytes, write_shards


def digest(data: bytes) -> dict[str, object]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (no interpreter start-up): exit status, stdout, stderr."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def demo_manifest(workspace: Path, folder: Path) -> tuple[Path, dict[str, dict]]:
    """The demo's test shards as files plus a manifest (txt and json inline); their digests by key."""
    (folder / "media").mkdir(parents=True)
    expected, lines = {}, []
    for shard in sorted((workspace / "data" / "demo" / "test").glob("*.tar")):
        for raw in read_shard(str(shard)):
            key = raw["__key__"]
            fields = {ext: data for ext, data in raw.items() if not ext.startswith("__")}
            line = {"__key__": key}
            for ext, data in fields.items():
                if ext == "txt":
                    line[ext] = data.decode("utf-8")
                elif ext == "json":
                    line[ext] = json.loads(data)
                else:
                    (folder / "media" / f"{key}.{ext}").write_bytes(data)
                    line[ext] = f"media/{key}.{ext}"
            lines.append(json.dumps(line))
            expected[key] = {ext: digest(data) for ext, data in fields.items()}
    manifest = folder / "samples.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, expected


def test_manifest_round_trip_is_byte_exact(workspace, tmp_path, capsys):
    manifest, expected = demo_manifest(workspace, tmp_path / "src")
    assert {ext for fields in expected.values() for ext in fields} == {"png", "wav", "mp4", "txt", "json"}
    out = tmp_path / "out"

    written = unimodal(
        "shards",
        "write",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--max-count",
        "50",
        "--workers",
        "2",
        cwd=tmp_path,
    )
    assert written.returncode == 0, written.stderr
    n = len(expected)
    shards = sorted(out.glob("*.tar"))
    assert [p.name for p in shards] == [f"shard-{i:06d}.tar" for i in range(-(-n // 50))]
    assert f"wrote {len(shards)} shards, {n} samples" in written.stdout

    code, out_text, err = run_main(capsys, "data", "inspect", *map(str, shards), "--json", "--samples")
    assert code == 0, err
    report = json.loads(out_text)
    assert report["samples"] == n and report["skipped"] == 0 and report["broken_shards"] == []
    assert {s["key"]: s["fields"] for s in report["per_sample"]} == expected

    index = json.loads((out / "index.json").read_text())
    per_shard = {p.name: sum(s["shard"] == str(p) for s in report["per_sample"]) for p in shards}
    assert index["shards"] == [
        {"name": p.name, "samples": per_shard[p.name], "bytes": p.stat().st_size} for p in shards
    ]
    assert index["samples"] == n and max(per_shard.values()) == 50

    serial = tmp_path / "serial"
    code, _, err = run_main(
        capsys, "shards", "write", "--manifest", str(manifest), "--out", str(serial), "--max-count", "50"
    )
    assert code == 0, err
    assert [(p.name, p.read_bytes()) for p in sorted(serial.glob("*.tar"))] == [
        (p.name, p.read_bytes()) for p in shards
    ]


def test_folder_with_sidecars_and_unsafe_names(tmp_path, capsys):
    files = {
        "a.b c/1.jpg": b"jpeg 1",
        "a.b c/1.txt": b"a caption",
        "cats/001.JPG": b"jpeg 2",
        "cats/001.txt": b"a cat",
        "cats/002.seg.png": b"mask",
        "cats/002.jpg": b"jpeg 3",
        "cats/.DS_Store": b"hidden, left out",
    }
    folder = tmp_path / "photos"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    out = tmp_path / "out"

    code, stdout, err = run_main(
        capsys, "shards", "write", "--folder", str(folder), "--out", str(out), "--prefix", "photos"
    )
    assert code == 0, err
    samples = {
        s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
        for s in read_shard(str(out / "photos-000000.tar"))
    }
    assert samples == {
        "a_b_c_1": {"jpg": b"jpeg 1", "txt": b"a caption"},
        "cats_001": {"jpg": b"jpeg 2", "txt": b"a cat"},
        "cats_002": {"jpg": b"jpeg 3", "seg.png": b"mask"},
    }
    assert f"{out}/photos-{{000000..000000}}.tar" in stdout


def test_max_size_bounds_every_shard(tmp_path):
    samples = [Sample(f"s{i}", {"bin": os.urandom(3000 + 100 * i)}, f"sample {i}") for i in range(20)]
    entries = write_shards(samples, tmp_path, max_size=size_in_bytes("20K"))
    assert len(entries) > 1 and sum(e["samples"] for e in entries) == 20
    assert all(e["bytes"] <= 20 * 1024 for e in entries)
    assert size_in_bytes("500M") == 500 << 20 and size_in_bytes("1.5g") == 3 << 29


def test_a_failed_shard_leaves_no_shard_behind(tmp_path):
    samples = [Sample(f"s{i}", {"bin": b"data"}, f"sample {i}") for i in range(3)]
    samples.append(Sample("unreadable", {"bin": tmp_path}, "sample 3"))  # a folder: sized, then unreadable
    with pytest.raises(ShardWriteError, match="sample 3: field 'bin': cannot read"):
        write_shards(samples, tmp_path / "out", max_count=1, workers=2)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.fixture
def outside(tmp_path) -> Path:
    """A manifest folder `m` with one good file, next to a file outside it."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "ok.png").write_bytes(b"png")
    (tmp_path / "x.png").write_bytes(b"secret")
    (tmp_path / "m" / "link.png").symlink_to(tmp_path / "x.png")
    return tmp_path.resolve()


@pytest.mark.parametrize(
    "line, message",
    [
        ({"png": "../x.png"}, "line 2: field 'png': ../x.png (-> {root}/x.png) is outside {root}/m"),
        ({"png": "{root}/x.png"}, "line 2: field 'png': {root}/x.png is outside {root}/m"),
        ({"png": "link.png"}, "line 2: field 'png': link.png (-> {root}/x.png) is outside {root}/m"),
        ({"wav": "nope.wav"}, "line 2: field 'wav': no such file nope.wav"),
        ({"pyd": "ok.png"}, "line 2: field 'pyd': pickle fields are refused"),
        (
            {"__key__": "a.b", "png": "ok.png"},
            "duplicate key 'a_b': {root}/m/m.jsonl line 1 and {root}/m/m.jsonl line 2",
        ),
        ("{not json", "line 2: not JSON"),
    ],
)
def test_refusals_name_the_line_and_field_and_write_nothing(outside, capsys, line, message):
    root = str(outside)
    manifest = outside / "m" / "m.jsonl"
    bad = json.dumps(line).replace("{root}", root) if isinstance(line, dict) else line
    manifest.write_text(json.dumps({"__key__": "a_b", "png": "ok.png", "txt": "fine"}) + "\n" + bad + "\n")

    code, _, err = run_main(capsys, "shards", "write", "--manifest", str(manifest), "--out", str(outside / "out"))
    assert code == 2
    assert err.startswith("error: ") and message.replace("{root}", root) in err
    assert not list(outside.rglob("*.tar"))


def test_inspect_reports_corrupt_pickled_and_truncated(workspace, tmp_path, capsys):
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    sentinel = tmp_path / "pwned"
    bad = tmp_path / "bad-000000.tar"
    with wds.TarWriter(str(bad)) as sink:
        sink.write({"__key__": "good", "png": png.getvalue(), "txt": b"red"})
        sink.write({"__key__": "corrupt", "png": png.getvalue()[:40] + b"\0" * 40, "txt": b"broken"})
        sink.write({"__key__": "pickled", "pyd": pickle.dumps(Boom(str(sentinel))), "txt": b"runs code"})
    demo = workspace / "data" / "demo" / "test" / "image-000000.tar"
    cut = tmp_path / "cut-000000.tar"
    cut.write_bytes(demo.read_bytes()[: demo.stat().st_size // 2 + 100])

    code, stdout, err = run_main(capsys, "data", "inspect", str(bad), str(cut), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["skip_reasons"] == {"undecodable png": 1}
    assert report["examples"] == [{"shard": str(bad), "key": "corrupt", "reason": "undecodable png"}]
    assert report["fields"]["png"]["failed"] == 1 and report["fields"]["txt"]["failed"] == 0
    assert report["not_decoded_pickle"] == {"pyd": 1}
    assert [b["url"] for b in report["broken_shards"]] == [str(cut)]
    assert 0 < report["samples"] - 3 < len(list(read_shard(str(demo))))  # the cut shard's good samples count
    assert not sentinel.exists()

    code, table, _ = run_main(capsys, "data", "inspect", str(bad), str(cut))
    assert (
        code == 0
        and "not decoded (pickle)" in table
        and "broken shards:" in table
        and "corrupt  undecodable png" in table
    )
    assert not sentinel.exists()

    code, _, err = run_main(capsys, "data", "inspect", str(tmp_path / "missing-{000000..000001}.tar"))
    assert code == 2 and "missing-000000.tar: no such shard" in err
