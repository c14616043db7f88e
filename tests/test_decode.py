"""Every decodable extension decodes from bytes made here; broken bytes become BadSample."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from unimodal.config import TokenizerConfig
from unimodal.data.decode import BadSample, decode_field
from unimodal.modalities import modalities
from unimodal.modalities.image import ImageTokens
from unimodal.modalities.video import VideoTokens

TOK = TokenizerConfig(text="unused.model")  # sample rate 16 kHz, 8 video frames
RATE = TOK.audio.sample_rate
BITS = 6  # video frames carry their index as 6 black/white bands, robust to lossy codecs
VIDEO_CODECS = [("mpeg4", "mp4"), ("libx264", "mp4"), ("libvpx", "webm"), ("libvpx-vp9", "webm")]


def image_bytes(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def decode_image(data: bytes, ext: str = "png") -> np.ndarray:
    return np.asarray(decode_field({ext: data}, ext, "image", TOK))


def test_images_round_trip_as_rgb():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    for fmt, options in [("PNG", {}), ("WEBP", {"lossless": True})]:
        assert np.array_equal(decode_image(image_bytes(Image.fromarray(rgb), fmt, **options)), rgb)

    palette = Image.fromarray(rgb).quantize(colors=16)
    assert np.array_equal(decode_image(image_bytes(palette, "PNG")), np.asarray(palette.convert("RGB")))
    alpha = rng.integers(0, 256, (16, 24, 1), dtype=np.uint8)
    assert np.array_equal(decode_image(image_bytes(Image.fromarray(np.concatenate([rgb, alpha], 2)), "PNG")), rgb)
    grey = rgb[..., 0]
    assert np.array_equal(decode_image(image_bytes(Image.fromarray(grey), "PNG")), np.stack([grey] * 3, 2))
    deep = grey.astype(np.uint16) * 257  # 16-bit greyscale scales down instead of clipping to white
    assert np.array_equal(decode_image(image_bytes(Image.fromarray(deep), "PNG")), np.stack([grey] * 3, 2))

    xs, ys = np.meshgrid(np.arange(32) * 8, np.arange(32) * 4)
    smooth = np.stack([xs, ys, np.full_like(xs, 128)], 2).astype(np.uint8)
    for ext in ("jpg", "jpeg"):
        got = decode_image(image_bytes(Image.fromarray(smooth), "JPEG", quality=95), ext)
        assert got.shape == smooth.shape and np.abs(got.astype(int) - smooth).mean() < 2


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_decodes_as_pillow_does_at_full_and_reduced_scale(mode):
    """libjpeg-turbo straight to an array gives Pillow's pixels; a JPEG >= 2x the recipe's size gives Pillow's draft."""
    xs, ys = np.meshgrid(np.arange(300), np.arange(200))
    rgb = np.stack([xs % 256, ys, (xs + ys) % 256], 2).astype(np.uint8)
    data = image_bytes(Image.fromarray(rgb).convert(mode), "JPEG", quality=90)
    tolerance = 1 if mode == "CMYK" else 0  # CMYK's conversion to RGB may round differently
    for size, side in [(200, (200, 300)), (64, (100, 150)), (32, (50, 75)), (24, (25, 38))]:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size, size))
        ref = np.asarray(img.convert("RGB")).astype(int)
        got = decode_field({"jpg": data}, "jpg", "image", TOK.model_copy(update={"image": ImageTokens(size=size)}))
        assert got.shape[:2] == side == ref.shape[:2] and got.dtype == np.uint8
        assert np.abs(got - ref).max() <= tolerance


@pytest.mark.parametrize(
    "ext, fmt, subtype",
    [
        ("wav", "WAV", "PCM_16"),
        ("flac", "FLAC", "PCM_16"),
        ("ogg", "OGG", "VORBIS"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ],
)
@pytest.mark.parametrize("source_rate", [8000, 22050, 44100])
def test_audio_is_mono_at_the_recipe_rate(ext, fmt, subtype, source_rate):
    n = source_rate // 2
    sine = 0.4 * np.sin(2 * np.pi * 440 * np.arange(n) / source_rate)
    buf = io.BytesIO()
    soundfile.write(buf, np.stack([sine, 0.5 * sine], 1).astype(np.float32), source_rate, format=fmt, subtype=subtype)
    wave = decode_field({ext: buf.getvalue()}, ext, "audio", TOK)
    assert wave.dtype.is_floating_point and wave.shape == (-(-n * RATE // source_rate),)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.fft.rfftfreq(len(wave), 1 / RATE)[spectrum.argmax()] - 440) <= 4
    rms = float(wave[len(wave) // 4 : -len(wave) // 4].square().mean().sqrt())
    assert rms == pytest.approx(0.75 * 0.4 / np.sqrt(2), rel=0.1)  # the channels' mean


def test_empty_audio_is_a_bad_sample():
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros((0, 2), np.float32), RATE, format="WAV")
    with pytest.raises(BadSample, match="audio has no samples"):
        decode_field({"wav": buf.getvalue()}, "wav", "audio", TOK)


def video_bytes(codec: str, fmt: str, count: int, rate: int = 24, **options: str) -> bytes:
    """`count` frames; frame i shows i in binary, one 8-pixel-wide band per bit."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt, options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = 8 * BITS, 16, "yuv420p"
        for i in range(count):
            bits = (i >> np.arange(BITS)) & 1
            frame = np.repeat(bits * 255, 8).astype(np.uint8)[None, :, None].repeat(16, 0).repeat(3, 2)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def frame_indices(video: np.ndarray) -> list[int]:
    bands = video[:, :, 2::8].mean(axis=(1, 3))[:, :BITS]  # a column inside each band, clear of its edges
    return [int(((band > 128) << np.arange(BITS)).sum()) for band in bands]


def decode_video(data: bytes, ext: str, **video: float) -> np.ndarray:
    tok = TOK.model_copy(update={"video": VideoTokens(**video)})
    return decode_field({ext: data}, ext, "video", tok)


@pytest.mark.parametrize("codec, ext", VIDEO_CODECS)
def test_video_frames_spread_over_the_clip_or_at_a_rate_from_its_middle(codec, ext):
    clip = video_bytes(codec, ext, 48)  # 2 s at 24 fps
    spread = decode_video(clip, ext)
    assert spread.shape == (8, 16, 48, 3) and spread.dtype == np.uint8
    assert frame_indices(spread) == [0, 7, 13, 20, 27, 34, 40, 47]
    # 4 frames at 4 fps cover 1 s: the window [0.5 s, 1.5 s) is centred in the 2 s clip
    assert frame_indices(decode_video(clip, ext, frames=4, fps=4)) == [12, 18, 24, 30]
    # a 0.42 s clip is shorter than that window: it starts at 0 and the last frame repeats
    short = video_bytes(codec, ext, 10)
    assert frame_indices(decode_video(short, ext, frames=4, fps=4)) == [0, 6, 9, 9]


@pytest.mark.parametrize("codec, ext", VIDEO_CODECS)
@pytest.mark.parametrize("fps", [24, 12])
def test_video_at_a_rate_dividing_the_source_rate_is_evenly_spaced(codec, ext, fps):
    # 45 frames: the centred start falls exactly between two frames, and so would every later time
    got = frame_indices(decode_video(video_bytes(codec, ext, 45), ext, frames=4, fps=fps))
    start = (45 - 4 * 24 / fps) / 2
    assert got[0] in (start - 0.5, start + 0.5) and np.diff(got).tolist() == [24 // fps] * 3


def test_video_without_a_duration_in_its_header_is_measured():
    clip = video_bytes("libvpx", "webm", 48, live="1")  # live webm: no duration written
    with av.open(io.BytesIO(clip)) as container:
        assert not container.duration and not container.streams.video[0].duration
    assert frame_indices(decode_video(clip, "webm", frames=4, fps=4)) == [12, 18, 24, 30]


@pytest.mark.parametrize("modality, ext", [(m.name, e) for m in modalities() for e in m.extensions])
def test_broken_bytes_are_bad_samples_named_by_extension(modality, ext):
    field = "json.caption" if ext == "json" else ext
    with pytest.raises(BadSample) as err:
        decode_field({ext: b"\xff\xfe not a valid " + ext.encode() + b" file \x00" * 40}, field, modality, TOK)
    assert err.value.reason == f"undecodable {ext}"


def test_json_fields_follow_their_path():
    raw = {"json": json.dumps({"answer": {"text": "right", "votes": 3}, "tags": ["a"]}).encode()}
    assert decode_field(raw, "json.answer.text", "text", TOK) == "right"
    assert decode_field(raw, "json.answer.votes", "text", TOK) == "3"
    for path in ("json.answer.txt", "json.answer.text.more", "json.question"):
        with pytest.raises(BadSample) as err:
            decode_field(raw, path, "text", TOK)
        assert err.value.reason == "missing json field"
    with pytest.raises(BadSample, match="json field is not text"):
        decode_field(raw, "json.tags", "text", TOK)
