"""Decode raw shard samples (bytes per field) into Examples, without pickle.

Each decoder takes the member's bytes and returns plain arrays/strings; the
tokenizer turns those into patches. Decoding runs in DataLoader workers.
A sample that cannot be decoded raises `BadSample` with a short reason, which
the stream counts per dataset and skips.

Nothing here unpickles (no pickle, torch.load or webdataset auto-decoders):
a shard is untrusted input, so pickle-bearing members are never decodable.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

import av
import numpy as np
import simplejpeg
import soundfile
import torch
import torchaudio.functional as AF
from PIL import Image

from unimodal.config import DatasetConfig, TokenizerConfig, VideoTokens
from unimodal.example import Example
from unimodal.fields import extension, split_field

JPEG_MAGIC = b"\xff\xd8\xff"  # start of image, then the first marker


class BadSample(Exception):
    """A sample that cannot be used; `reason` is short enough to count by."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """jpg/png/webp as uint8 RGB [H, W, 3]; palette, greyscale and alpha inputs are converted too.

    JPEGs go straight from libjpeg-turbo into the array (simplejpeg): no
    Python image object and no copy out of one, a quarter less time than
    Pillow's decode plus its array copy. With `size`, a JPEG at least twice
    that size on both sides is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
    DCT scaling), the smallest that still covers size x size: a fraction of
    the decoding work, and the tokenizer's antialiased resize does the rest
    (libjpeg's other eighths scale more slowly than a full decode, so they
    are not used). Colour spaces simplejpeg does not convert (CMYK, YCCK)
    and every other format go through Pillow.
    """
    if data[:3] == JPEG_MAGIC:
        try:
            return decode_jpeg(data, size)
        except ValueError:  # CMYK or YCCK; corrupt data fails again below, with Pillow's message
            pass
    img = Image.open(io.BytesIO(data))
    if size:
        img.draft("RGB", (size, size))
    if img.mode.startswith("I;16"):  # 16-bit greyscale: Pillow's own conversion clips it to white
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    return np.array(img if img.mode == "RGB" else img.convert("RGB"))  # alpha dropped


def decode_jpeg(data: bytes, size: int | None) -> np.ndarray:
    """libjpeg-turbo through simplejpeg, at the largest power-of-two reduction that still covers `size`."""
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    scale = 1
    while size and scale < 8 and min(h, w) >= 2 * scale * size:
        scale *= 2
    # simplejpeg picks the smallest scaling factor (in eighths) giving at least these sides: exactly 1/scale
    return simplejpeg.decode_jpeg(data, "RGB", min_height=-(-h // scale), min_width=-(-w // scale))


def decode_audio(data: bytes, sample_rate: int) -> torch.Tensor:
    """Mono float32 waveform at `sample_rate`: channels averaged, then resampled.

    soundfile decodes wav, flac, ogg (vorbis) and mp3 alike: its wheels bundle
    libsndfile >= 1.1, the first with mp3, so no second decoder is needed.
    """
    wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if not len(wave):
        raise BadSample("audio has no samples")
    mono = torch.from_numpy(wave.mean(axis=1))
    if rate != sample_rate:
        mono = AF.resample(mono, rate, sample_rate)
    return mono


def decode_video(data: bytes, video: VideoTokens) -> np.ndarray:
    """`video.frames` RGB frames, uint8 [T, H, W, 3].

    Without `video.fps` they are spread evenly over the whole clip, which needs
    every frame decoded. With it they are taken at that rate from a window of
    frames/fps seconds centred in the clip (or starting at 0 if the clip is
    shorter), and decoding stops once the window is past.
    """
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        decoded = container.decode(stream)
        if video.fps is None:
            frames = list(decoded)
            if not frames:
                raise BadSample("video has no frames")
            spread = np.linspace(0, len(frames) - 1, video.frames).round().astype(int)
            picked = [frames[i] for i in spread]
        else:
            start, seconds = clip_span(container, stream)
            if seconds is None:  # e.g. a live-recorded webm, whose header never got a duration
                decoded = list(decoded)
                seconds = measured_seconds(decoded)
            start += max(0.0, (seconds - video.frames / video.fps) / 2)
            picked = frames_at_rate(decoded, start, video.frames, video.fps)
        arrays = {id(f): f.to_ndarray(format="rgb24") for f in picked}  # a repeated frame converts once
    return np.stack([arrays[id(f)] for f in picked])


def clip_span(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[float, float | None]:
    """The clip's start time and duration in seconds from its header (duration None if absent)."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration:
        return start, float(stream.duration * stream.time_base)
    if container.duration:  # webm and mkv keep the duration for the file only
        return start, container.duration / av.time_base
    return start, None


def measured_seconds(frames: list[av.VideoFrame]) -> float:
    """Duration of decoded frames: first to last, plus the last one's share."""
    if len(frames) < 2:
        return 0.0
    span = frames[-1].time - frames[0].time
    return span * len(frames) / (len(frames) - 1)


def frames_at_rate(decoded: Iterable[av.VideoFrame], start: float, count: int, fps: float) -> list[av.VideoFrame]:
    """`count` frames nearest the times start, +1/fps, +2/fps...; the last repeats if the clip ends first.

    Later times count from the first picked frame rather than from `start`, so a
    rate that divides the source's lands on frames instead of between two, where
    rounding could pick one frame twice and skip its neighbour.
    """
    picked: list[av.VideoFrame] = []
    prev = None
    for frame in decoded:
        while len(picked) < count:
            target = picked[0].time + len(picked) / fps if picked else start
            if frame.time < target:
                break
            prev_nearer = prev is not None and target - prev.time <= frame.time - target
            picked.append(prev if prev_nearer else frame)
        if len(picked) == count:
            return picked
        prev = frame
    if prev is None:
        raise BadSample("video has no frames")
    return picked + [prev] * (count - len(picked))


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
            return decode_image(data, tok.image.size)
        if modality == "audio":
            return decode_audio(data, tok.audio.sample_rate)
        return decode_video(data, tok.video)
    except BadSample:
        raise
    except Exception as err:  # every library raises its own kind on corrupt media
        raise BadSample(f"undecodable {extension(field)}", repr(err)[:200]) from None


def decode_example(
    raw: dict[str, Any], index: int, ds: DatasetConfig, tok: TokenizerConfig, training: bool = True
) -> Example:
    """Outside `training` a dataset's privileged inputs (OS-MD) are left out: held-out data need not hold them."""
    inputs = {m: decode_field(raw, field, m, tok) for m, field in ds.decoded_inputs(training).items()}
    target = decode_field(raw, ds.target, "text", tok) if ds.target is not None else None
    return Example(dataset=index, key=raw["__key__"], inputs=inputs, target=target, epoch=raw.get("__epoch__", 0))
