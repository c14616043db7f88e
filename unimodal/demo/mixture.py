"""Small real demo data, written as WebDataset shards, so every recipe runs offline.

All four modalities are built from one idea, the digits 0-9, so a model can
learn something checkable in minutes:

    image  sklearn's 1,797 real 8x8 handwritten digit scans, as 32x32 PNGs
    audio  the digit as sound: a DTMF keypad tone, or half the clips espeak-ng speech
           (`speech`: by default where espeak-ng is installed)
    video  a digit scan sliding left or right across a 32x32 canvas, as MP4
    text   digit words to numerals: "four one two" -> "412"

Layout (shards are plain tars, one sample = members sharing a key):

    out_dir/train/<modality>-000000.tar, <modality>-000001.tar
    out_dir/test/<modality>-000000.tar
    out_dir/<split>/index.json  samples and bytes per shard (see unimodal.data.index)
    out_dir/index.json      sample counts per split and modality

Image and video test samples come from scans held out of train, never shared.
The same seed writes the same bytes (with speech, on the same espeak-ng).

    unimodal data demo data/demo [--scale 0.1] [--speech | --no-speech]
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_digits

from unimodal.data.index import write_index

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DTMF_HZ = {  # (row, column) tone of each key on a telephone keypad
    1: (697, 1209),
    2: (697, 1336),
    3: (697, 1477),
    4: (770, 1209),
    5: (770, 1336),
    6: (770, 1477),
    7: (852, 1209),
    8: (852, 1336),
    9: (852, 1477),
    0: (941, 1336),
}
SAMPLE_RATE = 16_000  # audio clips are exactly 1 s at this rate
IMAGE_SIZE = 32
FRAMES, FPS, SPRITE = 8, 8, 16  # video: 8 frames at 8 fps, the digit drawn 16x16
TRAIN_SHARDS = 2  # recipes name train/<modality>-{000000..000001}.tar
MODALITIES = ("image", "audio", "video", "text")
SPLITS = ("train", "test")
DEFAULT_COUNTS = {"audio": {"train": 2000, "test": 300}, "text": {"train": 4000, "test": 300}}


def write_demo(
    out_dir: str | Path, *, scale: float = 1.0, seed: int = 0, speech: bool | None = None
) -> dict[str, dict[str, int]]:
    """Write the demo shards under `out_dir`; return {split: {modality: samples}}.

    `scale` multiplies every sample count (tests use 0.02); layout is the same
    at any scale. Image/video use round(scale * scans) of each split's scans.
    `speech`: see `use_speech`.
    """
    speech = use_speech(speech)
    out_dir = Path(out_dir)
    digits = digit_scans(seed)

    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        train = split == "train"
        least = TRAIN_SHARDS if train else 1  # never fewer samples than shards
        n_scans = max(least, round(scale * len(digits[split][1])))
        scans, labels = (array[:n_scans] for array in digits[split])
        n_audio = max(least, round(scale * DEFAULT_COUNTS["audio"][split]))
        n_text = max(least, round(scale * DEFAULT_COUNTS["text"][split]))
        # a generator per modality and split: one count changing leaves the other bytes alone
        split_id = SPLITS.index(split)
        rng = {m: np.random.default_rng([seed, k, split_id]) for k, m in enumerate(MODALITIES)}
        plans = {  # modality: (sample count, lazily made samples)
            "image": (n_scans, image_samples(scans, labels)),
            "audio": (n_audio, audio_samples(n_audio, rng["audio"], speech)),
            "video": (
                n_scans * (2 if train else 1),
                video_samples(scans, labels, rng["video"], both_ways=train),
            ),
            "text": (n_text, text_samples(n_text, rng["text"])),
        }
        shards = TRAIN_SHARDS if train else 1
        counts[split] = {
            modality: write_shards(out_dir / split, modality, split, samples, total, shards)
            for modality, (total, samples) in plans.items()
        }

    (out_dir / "index.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts


def use_speech(speech: bool | None) -> bool:
    """Whether half the audio clips are espeak-ng speech: `speech` as given (True needs
    espeak-ng on PATH), or where it is installed when None. False: DTMF tones only, the
    same bytes on every machine."""
    installed = shutil.which("espeak-ng") is not None
    if speech and not installed:
        raise FileNotFoundError(
            "speech=True needs espeak-ng on PATH (apt-get install espeak-ng); speech=False writes DTMF tones only"
        )
    return installed if speech is None else speech


def digit_scans(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sklearn's scans as uint8 [n, 8, 8] and their labels, split 80/20 into train/test."""
    digits = load_digits()
    scans = (digits.images * 255 / 16).round().astype(np.uint8)  # from 0..16
    order = np.random.default_rng(seed).permutation(len(scans))
    held_out = len(scans) // 5
    ids = {"train": order[held_out:], "test": order[:held_out]}
    return {split: (scans[i], digits.target[i]) for split, i in ids.items()}


def write_shards(directory: Path, modality: str, split: str, samples, total: int, shards: int) -> int:
    """Spread `total` samples evenly over `shards` tars named <modality>-%06d.tar, indexed."""
    directory.mkdir(parents=True, exist_ok=True)
    pattern = str(directory / f"{modality}-%06d.tar")
    per_shard = math.ceil(total / shards)
    written = 0
    # mtime=0 so that the tars themselves, not just their members, are reproducible
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0, mtime=0) as sink:
        for sample in samples:
            sink.write({"__key__": f"{modality}-{split}-{written:06d}", **sample})
            written += 1
    names = [Path(pattern % i) for i in range(math.ceil(written / per_shard))]
    write_index(
        directory,
        [
            {"name": p.name, "samples": min(per_shard, written - i * per_shard), "bytes": p.stat().st_size}
            for i, p in enumerate(names)
        ],
    )
    return written


def upscale(scan: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(scan).resize((size, size), Image.Resampling.BILINEAR)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_samples(scans: np.ndarray, labels: np.ndarray):
    for scan, label in zip(scans, labels):
        word = WORDS[label]
        yield {
            "png": png(upscale(scan, IMAGE_SIZE)),
            "txt": f"a handwritten digit {word}",
            "json": {"label": int(label), "word": word},
        }


def dtmf(digit: int, rng: np.random.Generator) -> np.ndarray:
    """The digit's two keypad tones, unit peak, at a random onset and duration within 1 s."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    duration = rng.uniform(0.25, 0.6)
    onset = rng.uniform(0, 1 - duration)
    low, high = DTMF_HZ[digit]
    phase = rng.uniform(0, 2 * np.pi, size=2)
    tones = np.sin(2 * np.pi * low * t + phase[0]) + np.sin(2 * np.pi * high * t + phase[1])
    ramp = np.clip(np.minimum(t - onset, onset + duration - t) / 0.005, 0, 1)  # 5 ms fades
    return 0.5 * tones * ramp


def spoken(word: str, rng: np.random.Generator) -> np.ndarray:
    """The word said by espeak-ng at a random speed and pitch, unit peak, placed within 1 s."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "word.wav"
        speed, pitch = rng.integers(120, 221), rng.integers(20, 81)
        command = ["espeak-ng", "-w", str(path), "-s", str(speed), "-p", str(pitch), word]
        subprocess.run(command, check=True, capture_output=True)
        wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    wave = AF.resample(torch.from_numpy(wave.mean(axis=1)), rate, SAMPLE_RATE).numpy()[:SAMPLE_RATE]
    wave = wave / max(np.abs(wave).max(), 1e-6)
    onset = rng.integers(0, SAMPLE_RATE - len(wave) + 1)
    return np.pad(wave, (onset, SAMPLE_RATE - len(wave) - onset))


def digit_sound(digit: int, rng: np.random.Generator, speech: bool) -> tuple[bytes, str]:
    """The digit as a 1 s 16 kHz WAV at a random level in white noise of random SNR, and its source."""
    source = "espeak" if speech and rng.random() < 0.5 else "dtmf"
    signal = spoken(WORDS[digit], rng) if source == "espeak" else dtmf(digit, rng)
    signal = signal * rng.uniform(0.1, 0.8)
    power = np.mean(signal[signal != 0] ** 2)  # while sounding, not over the silence
    noise = rng.normal(0, np.sqrt(power / 10 ** (rng.uniform(5, 30) / 10)), SAMPLE_RATE)
    wave = np.clip(signal + noise, -1, 1)
    wav = io.BytesIO()
    soundfile.write(wav, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return wav.getvalue(), source


def audio_samples(n: int, rng: np.random.Generator, speech: bool):
    """Random digits as sound (`digit_sound`)."""
    for _ in range(n):
        digit = int(rng.integers(10))
        wav, source = digit_sound(digit, rng, speech)
        yield {"wav": wav, "txt": WORDS[digit], "json": {"label": digit, "source": source}}


def sliding(scan: np.ndarray, direction: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 [FRAMES, 32, 32]: the digit moving 2-3 px a frame, always at least 3/4 in view."""
    sprite = np.asarray(upscale(scan, SPRITE))
    margin = SPRITE // 4  # how far the sprite may leave the canvas
    speed = int(rng.integers(2, 4))
    travel = speed * (FRAMES - 1)
    lowest, highest = -margin, IMAGE_SIZE - SPRITE + margin  # range of the sprite's left edge
    if direction == "right":
        start, step = rng.integers(lowest, highest - travel + 1), speed
    else:
        start, step = rng.integers(lowest + travel, highest + 1), -speed
    top = rng.integers(margin, IMAGE_SIZE - SPRITE - margin + 1)
    frames = np.zeros((FRAMES, IMAGE_SIZE, IMAGE_SIZE + 2 * margin), np.uint8)  # with margins
    for i in range(FRAMES):
        left = margin + start + step * i
        frames[i, top : top + SPRITE, left : left + SPRITE] = sprite
    return frames[:, :, margin:-margin]


def mp4(frames: np.ndarray) -> bytes:
    """H.264 MP4 of gray frames, in yuv420p so any decoder plays it.

    tune=zerolatency turns off B-frames and lookahead: every frame comes straight
    back on decode, and the bytes are reproducible (with lookahead, libx264 gave
    different bytes for the same frames now and then). One thread: frames are tiny.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        options = {"preset": "veryfast", "tune": "zerolatency"}
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = IMAGE_SIZE, IMAGE_SIZE, "yuv420p"
        stream.codec_context.thread_count = 1
        for i, gray in enumerate(frames):
            rgb = np.repeat(gray[..., None], 3, axis=2)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the encoder
    return buf.getvalue()


def video_samples(scans: np.ndarray, labels: np.ndarray, rng: np.random.Generator, both_ways: bool):
    """Train: every scan moving left and right, shuffled. Test: each scan one random way."""
    if both_ways:
        clips = [(i, d) for i in range(len(scans)) for d in ("left", "right")]
        clips = [clips[j] for j in rng.permutation(len(clips))]
    else:
        clips = [(i, ("left", "right")[rng.integers(2)]) for i in range(len(scans))]
    for i, direction in clips:
        word = WORDS[labels[i]]
        yield {
            "mp4": mp4(sliding(scans[i], direction, rng)),
            "txt": f"the digit {word} moves {direction}",
            "json": {"label": int(labels[i]), "direction": direction},
        }


def text_samples(n: int, rng: np.random.Generator):
    """Strings of 1-4 random digits (leading zeros allowed), read out digit by digit."""
    for _ in range(n):
        digits = rng.integers(0, 10, size=rng.integers(1, 5))
        numerals = "".join(map(str, digits))
        yield {"txt": " ".join(WORDS[d] for d in digits), "json": {"numerals": numerals}}
