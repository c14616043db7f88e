"""Audio: wav, flac, ogg and mp3 members, decoded to a mono waveform and patched as a log-mel spectrogram.

The decoder hands the tokenizer a float32 waveform at the settings' sample
rate; the patcher crops or pads it, takes the log-mel spectrogram
(torchaudio) and cuts it into time x frequency patches.
"""

from __future__ import annotations

import io

import soundfile
import torch
import torch.nn.functional as F
import torchaudio
import torchaudio.functional as AF
from pydantic import Field, model_validator

from unimodal.modalities.registry import BadSample, Modality, Settings

AUDIO = "audio"


class AudioTokens(Settings):
    sample_rate: int = 16000  # the waveform is resampled to this rate
    seconds: float = Field(1.0, gt=0)  # clips are cropped or zero-padded to this length
    n_fft: int = 512  # spectrogram window, in samples
    hop: int = 160  # between spectrogram frames, in samples
    n_mels: int = 64  # mel bands
    f_max: float | None = None  # highest mel frequency; absent: half the sample rate
    patch_frames: int = 10  # a patch's frames (time)
    patch_mels: int = 16  # a patch's mel bands (frequency)

    @model_validator(mode="after")
    def _divides(self) -> AudioTokens:
        if self.n_mels % self.patch_mels:
            raise ValueError(f"patch_mels {self.patch_mels} must divide n_mels {self.n_mels}")
        return self


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


def decode(data: bytes, path: list[str], cfg: AudioTokens) -> torch.Tensor:
    """The registry's decoder: `decode_audio` at the settings' sample rate."""
    return decode_audio(data, cfg.sample_rate)


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


# name, extensions, decoder, settings, patcher, patch dtype
MODALITY = Modality(AUDIO, ("wav", "flac", "ogg", "mp3"), decode, AudioTokens, AudioPatcher, torch.float32)
