"""Media to patch vectors: the non-text half of the modality-agnostic tokenizer.

Each patcher turns one decoded input into [n_tokens, patch_dim] rows (uint8
pixels for image and video, float log-mel for audio); the model's
per-modality stem projects them to d_model. Everything here runs in
DataLoader workers, so the accelerator only ever sees ready tensors.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from unimodal.config import AudioTokens, ImageTokens, VideoTokens


def resize_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> uint8 [..., size, size, 3], bilinear with antialiasing.

    torch's uint8 channels-last kernel: the same pixels as Pillow's BILINEAR
    resize to within one level, in under half the time (bench/loader.py).
    """
    flat = pixels.reshape(-1, *pixels.shape[-3:]).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
    out = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(*pixels.shape[:-3], size, size, 3)


class ImagePatcher:
    """Resize to size x size, cut into patch x patch squares (ViT style), RGB flattened.

    Patches stay uint8: a quarter of the bytes a worker hands over and the
    trainer moves to the device; the model scales them to [-1, 1] there.
    """

    def __init__(self, cfg: ImageTokens):
        self.cfg = cfg
        self.dim = 3 * cfg.patch * cfg.patch

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 [H, W, 3] as the decoder made it -> uint8 [n_patches, 3 * patch * patch]."""
        size, p = self.cfg.size, self.cfg.patch
        if pixels.shape[:2] != (size, size):
            pixels = resize_pixels(torch.from_numpy(pixels), size).numpy()
        g = size // p
        # (row, py, col, px, rgb) -> (row, col, py, px, rgb): a patch is rows of p RGB pixels, each row
        # one contiguous run of the image (7x faster to gather than channels-outermost; the stem's
        # Linear does not care which order its inputs come in); the gather is the one copy
        patches = pixels.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4)
        return torch.from_numpy(np.ascontiguousarray(patches).reshape(g * g, self.dim))


class AudioPatcher:
    """Log-mel spectrogram (torchaudio) cut into time x frequency patches.

    torchaudio's MelSpectrogram, in its two steps: the power of the complex
    spectrogram is taken as z * conj(z) (64 us for a 4 s clip) rather than
    |z|^2 (440 us: torch's complex abs is not vectorised), a quarter of a
    worker's time per audio sample; same values to float rounding.
    """

    def __init__(self, cfg: AudioTokens):
        self.cfg = cfg
        self.dim = cfg.patch_frames * cfg.patch_mels
        self.spectrogram = torchaudio.transforms.Spectrogram(n_fft=cfg.n_fft, hop_length=cfg.hop, power=None)
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=cfg.n_mels, sample_rate=cfg.sample_rate, f_max=cfg.f_max, n_stft=cfg.n_fft // 2 + 1
        )
        self.samples = round(cfg.seconds * cfg.sample_rate)

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram [n_mels, frames]."""
        z = self.spectrogram(wave)
        return self.mel_scale((z * z.conj()).real)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave[: self.samples]
        if len(wave) < self.samples:  # (F.pad copies even when it adds nothing)
            wave = F.pad(wave, (0, self.samples - len(wave)))
        logmel = self.mel(wave).add_(1e-6).log_()  # [n_mels, frames]; a fresh tensor, so in place
        mean, std = logmel.mean(), logmel.std()
        logmel.sub_(mean).div_(std + 1e-5)  # level-invariant
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
        g, p, k = c.size // c.patch, c.patch, c.tubelet
        x = torch.from_numpy(frames)  # [T, H, W, 3] uint8
        if x.shape[1:3] != (c.size, c.size):
            x = resize_pixels(x, c.size)
        x = x.reshape(c.frames // k, k, g, p, g, p, 3)
        # (tube, t, row, py, col, px, rgb) -> (tube, row, col, t, py, px, rgb): uint8, RGB innermost, as for images
        return x.permute(0, 2, 4, 1, 3, 5, 6).reshape(-1, self.dim)
