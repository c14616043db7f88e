"""The modality registry: a modality defined here, through the public API alone, is decoded, tokenized and
accepted or refused at recipe validation like a built-in one; what no modality claims is refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import yaml
from pydantic import Field, ValidationError

from unimodal.config import DatasetConfig, RecipeError, TokenizerConfig
from unimodal.data.decode import BadSample, decode_field
from unimodal.example import Example
from unimodal.modalities import (
    Modality,
    Settings,
    modalities,
    modality_codes,
    patch_modalities,
    register_modality,
    registry,
)
from unimodal.recipe import load_recipe
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.sequence import collate_rows
from unimodal.tokenize.text import train_text_tokenizer


class DepthTokens(Settings):
    width: int = Field(4, gt=0)  # columns kept of each row


def decode_depth(data: bytes, path: list[str], cfg: DepthTokens) -> np.ndarray:
    depth = np.load(io.BytesIO(data), allow_pickle=False)
    if depth.ndim != 2:
        raise BadSample("depth map is not 2-D")
    return depth.astype(np.float32)


class RowPatcher:
    """A depth map's rows, each one patch."""

    def __init__(self, cfg: DepthTokens):
        self.dim = cfg.width

    def __call__(self, depth: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(depth[:, : self.dim]))


DEPTH = Modality(
    name="depth",
    extensions=("npy",),
    decode=decode_depth,
    settings=DepthTokens,
    patcher=RowPatcher,
    patch_dtype=torch.float32,
)


@pytest.fixture
def depth(monkeypatch):
    """DEPTH registered for this test only: the registry is put back after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_CODES", dict(registry._CODES))
    return register_modality(DEPTH)


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    texts = ["a depth map of a room", "a near wall", "a far window"] * 20
    return train_text_tokenizer(texts, tmp_path_factory.mktemp("sp"), vocab_size=64)


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=array.dtype == object)
    return out.getvalue()


def dataset(inputs: dict[str, str], **fields) -> DatasetConfig:
    return DatasetConfig(name="d", task="describe", shards="x.tar", inputs=inputs, target="txt", **fields)


def test_the_builtins_keep_their_codes_and_stem_order():
    assert dict(modality_codes()) == {"pad": 0, "text": 1, "image": 2, "audio": 3, "video": 4}
    assert patch_modalities() == ("image", "audio", "video")


def test_a_registered_modality_is_decoded_and_tokenized(depth, sp_model):
    assert modality_codes()["depth"] == 5 and patch_modalities()[-1] == "depth"
    tok = TokenizerConfig.model_validate({"text": sp_model, "depth": {"width": 3}})
    assert tok.settings("depth") == DepthTokens(width=3)
    depth_map = np.arange(20, dtype=np.float32).reshape(5, 4)
    decoded = decode_field({"__key__": "k", "npy": npy(depth_map)}, "npy", "depth", tok)
    assert np.array_equal(decoded, depth_map)
    with pytest.raises(BadSample, match="undecodable npy"):  # a pickle inside is refused, not run
        decode_field({"npy": npy(np.array([{"a": 1}], dtype=object))}, "npy", "depth", tok)

    tokenizer = MultimodalTokenizer(tok, [dataset({"depth": "npy"})])
    assert tokenizer.patch_dims["depth"] == 3
    seq = tokenizer(Example(dataset=0, key="k", inputs={"depth": decoded}, target="a near wall"))
    assert [s.modality for s in seq.segments] == ["text", "depth"]
    batch = collate_rows([[seq]], tokenizer.patch_dims, bos_id=2)
    assert torch.equal(batch["patches_depth"], torch.from_numpy(depth_map[:, :3]))
    assert int((batch["modality"] == 5).sum()) == 5


def test_recipe_validation_accepts_a_registered_modality_and_refuses_what_none_claims(depth):
    assert dataset({"depth": "npy", "text": "txt"}).inputs == {"depth": "npy", "text": "txt"}
    with pytest.raises(ValidationError, match=r"field 'npy' has no image decoder \(image reads: jpg"):
        dataset({"image": "npy"})
    with pytest.raises(ValidationError, match=r"field 'xyz': no modality decodes \.xyz \(known extensions: txt, .*npy"):
        dataset({"depth": "xyz"})
    with pytest.raises(ValidationError, match=r"unknown modality 'lidar' \(known: text, image, audio, video, depth"):
        dataset({"lidar": "npy"})
    with pytest.raises(ValidationError, match=r"depth\.width"):
        TokenizerConfig.model_validate({"text": "sp.model", "depth": {"width": 0}})


def test_an_unregistered_modality_and_an_unclaimed_extension_are_refused():
    with pytest.raises(ValidationError, match=r"field 'npy': no modality decodes \.npy \(known extensions: txt, json"):
        dataset({"image": "npy"})
    with pytest.raises(ValidationError, match=r"(?s)target.*field 'pkl': no modality decodes \.pkl"):
        DatasetConfig(name="d", task="t", shards="x.tar", inputs={"text": "txt"}, target="pkl")
    with pytest.raises(ValidationError, match=r"depth: no such tokenizer field \(fields: max_text_tokens, text, image"):
        TokenizerConfig.model_validate({"text": "sp.model", "depth": {}})


def test_registering_twice_or_claiming_a_taken_extension_is_refused(depth):
    with pytest.raises(ValueError, match="modality 'depth' is registered already"):
        register_modality(DEPTH)
    with pytest.raises(ValueError, match="npy decoded by 'depth' already"):
        register_modality(Modality(name="range", extensions=("npy",), decode=decode_depth))
    with pytest.raises(ValueError, match="pkl hold pickles"):
        register_modality(Modality(name="range", extensions=("pkl",), decode=decode_depth))
    with pytest.raises(ValueError, match="needs a patcher"):  # ids are text's alone
        register_modality(Modality(name="range", extensions=("rng",), decode=decode_depth))
    assert [m.name for m in modalities()][-1] == "depth"


PLUGIN = """
import numpy as np
import torch

from unimodal.modalities import Modality, register_modality


class Pings:
    dim = 4

    def __init__(self, settings):
        pass

    def __call__(self, pings):
        return torch.from_numpy(pings).view(-1, self.dim)


def decode(data, path, settings):
    return np.frombuffer(data, dtype=np.float32)


register_modality(Modality("sonar", ("sonar",), decode, patcher=Pings, patch_dtype=torch.float32))
"""


def test_plugins_are_imported_before_validation(depth, tmp_path, monkeypatch):
    (tmp_path / "sonar_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(tmp_path)
    recipe = {
        "name": "toy",
        "tokenizer": {"text": "sp.model"},
        "data": {
            "datasets": [{"name": "s", "task": "t", "shards": "x.tar", "inputs": {"sonar": "sonar"}, "target": "txt"}]
        },
        "train": {"steps": 1, "output_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(recipe | {"plugins": ["sonar_plugin"]}))
    assert load_recipe(path, check_files=False).plugins == ["sonar_plugin"]
    assert "sonar" in modality_codes()
    path.write_text(yaml.safe_dump(recipe | {"plugins": ["no_such_plugin"]}))
    with pytest.raises(RecipeError, match="plugins: plugin 'no_such_plugin' cannot be imported"):
        load_recipe(path, check_files=False)
