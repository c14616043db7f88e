"""Decode raw shard samples (bytes per field) into Examples, without pickle.

Each decoder takes the member's bytes and returns plain arrays/strings; the
tokenizer turns those into patches. Decoding runs in DataLoader workers.
A sample that cannot be decoded raises `BadSample` with a short reason, which
the stream counts per dataset and skips.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from PIL import Image

from unimodal.config import DatasetConfig, TokenizerConfig
from unimodal.data.fields import extension, split_field


class BadSample(Exception):
    """A sample that cannot be used; `reason` is short enough to count by."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Example:
    """A decoded sample: its dataset, raw inputs per modality, and text target."""

    dataset: int
    key: str
    inputs: dict[str, Any]  # "text": str, "image": PIL.Image, "audio": float32 [n], "video": uint8 [T,H,W,3]
    target: str


def decode_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    return img.convert("RGB")


def decode_audio(data: bytes, sample_rate: int) -> torch.Tensor:
    """Mono float32 waveform at `sample_rate` (soundfile decodes, torchaudio resamples)."""
    wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = torch.from_numpy(wave.mean(axis=1))
    if rate != sample_rate:
        mono = AF.resample(mono, rate, sample_rate)
    return mono


def decode_video(data: bytes, frames: int) -> np.ndarray:
    """`frames` RGB frames spread evenly over the clip, uint8 [T, H, W, 3]."""
    with av.open(io.BytesIO(data)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not decoded:
        raise BadSample("video has no frames")
    pick = np.linspace(0, len(decoded) - 1, frames).round().astype(int)
    return np.stack([decoded[i] for i in pick])


def decode_text(data: bytes, path: list[str]) -> str:
    if not path:
        return data.decode("utf-8").strip()
    value: Any = json.loads(data)
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise BadSample("missing json field", ".".join(path))
        value = value[part]
    if isinstance(value, (dict, list)) or value is None:
        raise BadSample("json field is not text", ".".join(path))
    return str(value)


def member(raw: dict[str, Any], field: str) -> bytes:
    name, _ = split_field(field)
    if name not in raw:
        raise BadSample("missing field", name)
    return raw[name]


def decode_field(raw: dict[str, Any], field: str, modality: str, tok: TokenizerConfig) -> Any:
    data = member(raw, field)
    try:
        if modality == "text":
            return decode_text(data, split_field(field)[1])
        if modality == "image":
            return decode_image(data)
        if modality == "audio":
            return decode_audio(data, tok.audio.sample_rate)
        return decode_video(data, tok.video.frames)
    except BadSample:
        raise
    except Exception as err:  # every library raises its own kind on corrupt media
        raise BadSample(f"undecodable {extension(field)}", repr(err)[:200]) from None


def decode_example(raw: dict[str, Any], index: int, ds: DatasetConfig, tok: TokenizerConfig) -> Example:
    inputs = {m: decode_field(raw, field, m, tok) for m, field in ds.inputs.items()}
    target = decode_field(raw, ds.target, "text", tok)
    return Example(dataset=index, key=raw["__key__"], inputs=inputs, target=target)
