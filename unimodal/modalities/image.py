"""Images: jpg, png and webp members, decoded to RGB and cut into ViT-style patches.

The decoder hands the tokenizer uint8 RGB [H, W, 3]; the patcher resizes to
size x size and cuts patch x patch squares, kept uint8 (the model's stem scales
them to [-1, 1]).
"""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, model_validator

from unimodal.modalities.registry import Modality, Settings

IMAGE = "image"
JPEG_MAGIC = b"\xff\xd8\xff"  # start of image, then the first marker


class ImageTokens(Settings):
    size: int = Field(32, gt=0)  # side the image is resized to
    patch: int = Field(8, gt=0)  # side of a square patch

    @model_validator(mode="after")
    def _divides(self) -> ImageTokens:
        if self.size % self.patch:
            raise ValueError(f"patch {self.patch} must divide size {self.size}")
        return self


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


def decode(data: bytes, path: list[str], cfg: ImageTokens) -> np.ndarray:
    """The registry's decoder: `decode_image` at the settings' size (no json path: images are members)."""
    return decode_image(data, cfg.size)


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


# name, extensions, decoder, settings, patcher, patch dtype
MODALITY = Modality(IMAGE, ("jpg", "jpeg", "png", "webp"), decode, ImageTokens, ImagePatcher, torch.uint8)
