"""The demo shards: layout, raw readability, and that every sample says what its label says.

The shards under test are written with speech=False (DTMF tones only), the same bytes on
every machine; the speech path is tested on a fake espeak-ng everywhere, and on the real
one where it is installed (skipped, saying so, where it is not).
"""

import io
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import webdataset as wds
from PIL import Image

from unimodal.data.index import shard_samples
from unimodal.demo.mixture import FRAMES, SAMPLE_RATE, WORDS, audio_samples, digit_scans, use_speech, write_demo

SCALE = 0.02
FIELDS = {
    "image": {"png", "txt", "json"},
    "audio": {"wav", "txt", "json"},
    "video": {"mp4", "txt", "json"},
    "text": {"txt", "json"},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, write_demo(out, scale=SCALE, seed=0, speech=False)


def shards(out: Path, split: str, modality: str) -> list[str]:
    return sorted(str(p) for p in (out / split).glob(f"{modality}-*.tar"))


def samples(out: Path, split: str, modality: str) -> list[dict]:
    """Raw samples as WebDataset yields them without .decode(): bytes per field."""
    return list(wds.WebDataset(shards(out, split, modality), shardshuffle=False))


def test_layout_and_counts(demo):
    out, counts = demo
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = ["index.json", "train/index.json", "test/index.json"]
    for modality in FIELDS:
        expected += [f"test/{modality}-000000.tar"]
        expected += [f"train/{modality}-000000.tar", f"train/{modality}-000001.tar"]
    assert names == sorted(expected)
    assert json.loads((out / "index.json").read_text()) == counts
    assert counts == {
        "train": {"image": 29, "audio": 40, "video": 58, "text": 80},
        "test": {"image": 7, "audio": 6, "video": 7, "text": 6},
    }
    for modality, n in counts["train"].items():  # split evenly over the two train shards
        shard_files = shards(out, "train", modality)
        per_shard = [len(list(wds.WebDataset(s, shardshuffle=False))) for s in shard_files]
        assert sum(per_shard) == n and max(per_shard) - min(per_shard) <= 1
        assert shard_samples([str(s) for s in shard_files]) == per_shard  # index.json beside them


def test_shards_are_plain_tars_with_clean_keys(demo):
    out, counts = demo
    for split in counts:
        for modality, n in counts[split].items():
            keys = set()
            for shard in shards(out, split, modality):
                with tarfile.open(shard) as tar:
                    for name in tar.getnames():
                        key, ext = name.split(".")
                        assert re.fullmatch(rf"{modality}-{split}-\d{{6}}", key)
                        assert ext in FIELDS[modality]
                        keys.add(key)
            assert len(keys) == n
            raw = samples(out, split, modality)
            assert len(raw) == n
            for sample in raw:
                assert {k for k in sample if not k.startswith("__")} == FIELDS[modality]
                assert all(isinstance(sample[f], bytes) for f in FIELDS[modality])


def test_images(demo):
    out, _ = demo
    for sample in samples(out, "train", "image") + samples(out, "test", "image"):
        image = Image.open(io.BytesIO(sample["png"]))
        meta = json.loads(sample["json"])
        assert image.size == (32, 32) and image.mode == "L"
        assert np.asarray(image).max() > 100  # a digit, not a blank
        assert meta["word"] == WORDS[meta["label"]]
        assert sample["txt"].decode() == f"a handwritten digit {meta['word']}"


def test_train_and_test_scans_are_disjoint(demo):
    (train_scans, _), (test_scans, _) = digit_scans(seed=0).values()
    assert len(train_scans) + len(test_scans) == 1797 and len(test_scans) == 1797 // 5
    assert {s.tobytes() for s in train_scans}.isdisjoint({s.tobytes() for s in test_scans})
    out, _ = demo  # and the shards hold those splits
    train = {s["png"] for s in samples(out, "train", "image")}
    test = {s["png"] for s in samples(out, "test", "image")}
    assert train.isdisjoint(test)


def keypad_hz(digit: int) -> tuple[int, int]:
    """The standard DTMF (row, column) frequencies of a key: 1 2 3 / 4 5 6 / 7 8 9 / * 0 #."""
    row, col = divmod(digit - 1, 3) if digit else (3, 1)
    return (697, 770, 852, 941)[row], (1209, 1336, 1477)[col]


def dtmf_peaks(wave: np.ndarray) -> tuple[int, int]:
    """Strongest frequency (Hz) in the keypad's row band and in its column band."""
    spectrum = np.abs(np.fft.rfft(wave, n=SAMPLE_RATE))  # 1 Hz bins
    return 600 + int(np.argmax(spectrum[600:1000])), 1150 + int(np.argmax(spectrum[1150:1550]))


def test_audio_is_1s_16k_dtmf_of_its_digit(demo):
    out, _ = demo
    for sample in samples(out, "train", "audio") + samples(out, "test", "audio"):
        wave, rate = soundfile.read(io.BytesIO(sample["wav"]), dtype="float32")
        meta = json.loads(sample["json"])
        assert rate == SAMPLE_RATE and wave.shape == (SAMPLE_RATE,)
        assert sample["txt"].decode() == WORDS[meta["label"]]
        assert meta["source"] == "dtmf"  # speech=False, whatever the machine has
        low, high = dtmf_peaks(wave)
        want_low, want_high = keypad_hz(meta["label"])
        assert abs(low - want_low) <= 3 and abs(high - want_high) <= 3


def test_espeak_path(tmp_path, monkeypatch):
    """With espeak-ng on PATH, half the clips are its speech, resampled to 1 s at 16 kHz;
    speech is used by default only where espeak-ng is found, and asking for it without one fails.

    The fake espeak-ng says every word as 0.7 s of 440 Hz at 22.05 kHz, as the real one's rate.
    """
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: no espeak-ng
    assert use_speech(None) is False and use_speech(False) is False
    with pytest.raises(FileNotFoundError, match="speech=True needs espeak-ng on PATH"):
        write_demo(tmp_path / "demo", speech=True)
    assert not (tmp_path / "demo").exists()
    fake = tmp_path / "espeak-ng"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import array, math, sys, wave\n"
        "t = [i / 22050 for i in range(15435)]\n"
        "tone = array.array('h', (int(9000 * math.sin(2 * math.pi * 440 * x)) for x in t))\n"
        "with wave.open(sys.argv[sys.argv.index('-w') + 1], 'wb') as out:\n"
        "    out.setnchannels(1); out.setsampwidth(2); out.setframerate(22050)\n"
        "    out.writeframes(tone.tobytes())\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert use_speech(None) is True and use_speech(False) is False
    made = list(audio_samples(8, np.random.default_rng(0), speech=True))
    spoken = [s for s in made if s["json"]["source"] == "espeak"]
    assert 0 < len(spoken) < len(made)
    for sample in spoken:
        wave, rate = soundfile.read(io.BytesIO(sample["wav"]), dtype="float32")
        assert rate == SAMPLE_RATE and wave.shape == (SAMPLE_RATE,)
        assert abs(int(np.argmax(np.abs(np.fft.rfft(wave)))) - 440) <= 2


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed: speech tested on a fake one only"
)
def test_real_espeak_speech():
    """Where espeak-ng is installed the default uses it: half the clips are voiced speech, with
    power below 600 Hz (a keypad's lowest tone is 697 Hz), 1 s at 16 kHz."""
    assert use_speech(None) is True
    made = list(audio_samples(12, np.random.default_rng(0), speech=True))
    sources = [s["json"]["source"] for s in made]
    assert 0 < sources.count("espeak") < len(made)
    for sample, source in zip(made, sources):
        wave, rate = soundfile.read(io.BytesIO(sample["wav"]), dtype="float32")
        assert rate == SAMPLE_RATE and wave.shape == (SAMPLE_RATE,)
        power = np.abs(np.fft.rfft(wave)) ** 2
        below = power[50:600].sum() / power.sum()
        assert below > 0.1 if source == "espeak" else below < 0.05, (sample["json"], below)


def test_video_moves_its_digit_the_labelled_way(demo):
    out, _ = demo
    for sample in samples(out, "train", "video") + samples(out, "test", "video"):
        with av.open(io.BytesIO(sample["mp4"])) as container:
            frames = np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])
        meta = json.loads(sample["json"])
        assert frames.shape == (FRAMES, 32, 32)
        caption = f"the digit {WORDS[meta['label']]} moves {meta['direction']}"
        assert sample["txt"].decode() == caption
        mass = frames.astype(float).sum(axis=1)  # [frames, x]
        centre = (mass * np.arange(32)).sum(axis=1) / mass.sum(axis=1)
        shift = centre[-1] - centre[0]
        assert shift < -5 if meta["direction"] == "left" else shift > 5


def test_text_numerals_match_words(demo):
    out, _ = demo
    for sample in samples(out, "train", "text") + samples(out, "test", "text"):
        words = sample["txt"].decode().split()
        numerals = json.loads(sample["json"])["numerals"]
        assert 1 <= len(words) <= 4
        assert numerals == "".join(str(WORDS.index(w)) for w in words)


def test_same_seed_same_bytes(demo, tmp_path):
    out, _ = demo
    write_demo(tmp_path / "again", scale=SCALE, seed=0, speech=False)
    write_demo(tmp_path / "other", scale=SCALE, seed=1, speech=False)
    for tar in sorted(out.rglob("*.tar")):
        relative = tar.relative_to(out)
        assert tar.read_bytes() == (tmp_path / "again" / relative).read_bytes()
        assert tar.read_bytes() != (tmp_path / "other" / relative).read_bytes()
