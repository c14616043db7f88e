"""Decode raw shard samples (bytes per field) into Examples, without pickle.

Each field is decoded by its modality's decoder (unimodal/modalities/), which
returns plain arrays/strings; the tokenizer turns those into patches. Decoding
runs in DataLoader workers. A sample that cannot be decoded raises `BadSample`
with a short reason, which the stream counts per dataset and skips.

Nothing here unpickles (no pickle, torch.load or webdataset auto-decoders):
a shard is untrusted input, so pickle-bearing members are never decodable.
"""

from __future__ import annotations

from typing import Any

from unimodal.config import DatasetConfig, TokenizerConfig
from unimodal.example import Example
from unimodal.fields import extension, member, split_field
from unimodal.modalities import BadSample, modality
from unimodal.modalities.text import CLS, TEXT


def decode_field(raw: dict[str, Any], field: str, name: str, tok: TokenizerConfig) -> Any:
    """`field` of `raw` decoded as modality `name`, with its settings in `tok`."""
    decode = modality(name).decode
    data = member(raw, field)
    try:
        return decode(data, split_field(field)[1], tok.settings(name))
    except BadSample:
        raise
    except Exception as err:  # every library raises its own kind on corrupt media
        raise BadSample(f"undecodable {extension(field)}", repr(err)[:200]) from None


def named(value: Any, field: str, ds: DatasetConfig) -> Any:
    """A `.cls` field's class id written as its name from the dataset's `classes`; any other value as it is."""
    if ds.classes is None or extension(field) != CLS:
        return value
    if not value.isdigit() or int(value) >= len(ds.classes):
        raise BadSample("class id not in classes", f"{value[:20]!r} of {len(ds.classes)} classes")
    return ds.classes[int(value)]


def decode_example(
    raw: dict[str, Any], index: int, ds: DatasetConfig, tok: TokenizerConfig, training: bool = True
) -> Example:
    """Outside `training` a dataset's privileged inputs (OS-MD) are left out: held-out data need not hold them."""
    inputs = {m: named(decode_field(raw, field, m, tok), field, ds) for m, field in ds.decoded_inputs(training).items()}
    target = named(decode_field(raw, ds.target, TEXT, tok), ds.target, ds) if ds.target is not None else None
    return Example(dataset=index, key=raw["__key__"], inputs=inputs, target=target, epoch=raw.get("__epoch__", 0))
