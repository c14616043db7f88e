"""Media to patch vectors: the non-text half of the modality-agnostic tokenizer.

Each patcher turns one decoded input into [n_tokens, patch_dim] floats; the
model's per-modality stem projects them to d_model. Everything here runs in
DataLoader workers, so the accelerator only ever sees ready tensors.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from PIL import Image

from unimodal.config import AudioTokens, ImageTokens, VideoTokens


def _unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1]."""
    return pixels.float().div(127.5).sub(1.0)


class ImagePatcher:
    """Resize to size x size, cut into patch x patch squares (ViT style), RGB flattened."""

    def __init__(self, cfg: ImageTokens):
        self.cfg = cfg
        self.dim = 3 * cfg.patch * cfg.patch

    def __call__(self, image: Image.Image) -> torch.Tensor:
        size, p = self.cfg.size, self.cfg.patch
        img = image.resize((size, size), Image.BILINEAR)
        x = _unit(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())).permute(2, 0, 1)  # [3, H, W]
        g = size // p
        return x.reshape(3, g, p, g, p).permute(1, 3, 0, 2, 4).reshape(g * g, self.dim)


class AudioPatcher:
    """Log-mel spectrogram (torchaudio) cut into time x frequency patches."""

    def __init__(self, cfg: AudioTokens):
        self.cfg = cfg
        self.dim = cfg.patch_frames * cfg.patch_mels
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop,
            n_mels=cfg.n_mels,
            f_max=cfg.f_max,
        )
        self.samples = int(round(cfg.seconds * cfg.sample_rate))

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        wave = F.pad(wave[: self.samples], (0, max(0, self.samples - len(wave))))
        logmel = torch.log(self.mel(wave) + 1e-6)  # [n_mels, frames]
        logmel = (logmel - logmel.mean()) / (logmel.std() + 1e-5)  # level-invariant
        pf, pm = self.cfg.patch_frames, self.cfg.patch_mels
        t = logmel.shape[1] // pf
        x = logmel[:, : t * pf].reshape(self.cfg.n_mels // pm, pm, t, pf)
        return x.permute(2, 0, 1, 3).reshape(-1, self.dim)  # time-major, then frequency


class VideoPatcher:
    """Frames resized, cut into tubelets of `tubelet` frames x patch x patch."""

    def __init__(self, cfg: VideoTokens):
        self.cfg = cfg
        self.dim = 3 * cfg.tubelet * cfg.patch * cfg.patch

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        c = self.cfg
        x = _unit(torch.from_numpy(frames)).permute(0, 3, 1, 2)  # [T, 3, H, W]
        if x.shape[-2:] != (c.size, c.size):
            x = F.interpolate(x, size=(c.size, c.size), mode="bilinear", align_corners=False)
        g, p, k = c.size // c.patch, c.patch, c.tubelet
        x = x.reshape(c.frames // k, k, 3, g, p, g, p)
        return x.permute(0, 3, 5, 1, 2, 4, 6).reshape(-1, self.dim)
