"""Video: mp4, webm, mkv and avi members, decoded to sampled RGB frames and cut into tubelets.

The decoder (PyAV) hands the tokenizer `frames` uint8 RGB frames [T, H, W, 3];
the patcher resizes them and cuts tubelets of `tubelet` frames x patch x patch,
kept uint8 as image patches are.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import av
import numpy as np
import torch
from pydantic import Field, model_validator

from unimodal.modalities.image import resize_pixels
from unimodal.modalities.registry import BadSample, Modality, Settings

VIDEO = "video"


class VideoTokens(Settings):
    frames: int = Field(8, gt=0)
    # absent: `frames` spread evenly over the whole clip; set: `frames` taken at this rate
    # from the middle of the clip (the last frame repeats if the clip is too short)
    fps: float | None = Field(None, gt=0)
    size: int = Field(32, gt=0)  # side the frames are resized to
    patch: int = Field(8, gt=0)  # side of a tubelet
    tubelet: int = Field(2, gt=0)  # frames in a tubelet

    @model_validator(mode="after")
    def _divides(self) -> VideoTokens:
        if self.size % self.patch or self.frames % self.tubelet:
            raise ValueError("patch must divide size and tubelet must divide frames")
        return self


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


def decode(data: bytes, path: list[str], cfg: VideoTokens) -> np.ndarray:
    """The registry's decoder: `decode_video` with the settings."""
    return decode_video(data, cfg)


class VideoPatcher:
    """Frames resized, cut into tubelets of `tubelet` frames x patch x patch."""

    def __init__(self, cfg: VideoTokens):
        self.cfg = cfg
        self.dim = 3 * cfg.tubelet * cfg.patch * cfg.patch

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        c = self.cfg
        g, p, k = c.size // c.patch, c.patch, c.tubelet
        x = torch.from_numpy(frames)  # [T, H, W, 3] uint8
        if x.shape[1:3] != (c.size, c.size):
            x = resize_pixels(x, c.size)
        x = x.reshape(c.frames // k, k, g, p, g, p, 3)
        # (tube, t, row, py, col, px, rgb) -> (tube, row, col, t, py, px, rgb): uint8, RGB innermost, as for images
        return x.permute(0, 2, 4, 1, 3, 5, 6).reshape(-1, self.dim)


# name, extensions, decoder, settings, patcher, patch dtype
MODALITY = Modality(VIDEO, ("mp4", "webm", "mkv", "avi"), decode, VideoTokens, VideoPatcher, torch.uint8)
