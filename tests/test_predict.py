"""`unimodal predict` and `unimodal.pipeline` on files from the workspace's held-out shards, and beam search.

The model is the smoke stage 2's (all four modalities), untrained, saved in
the format `unimodal export` writes: the predictions' text is not asserted,
only that they run, what they report, and their errors. Beam search is checked
against its properties: one beam is greedy decoding exactly; the score it
returns is its text's log-probability under the model; with four beams that is
at least greedy's here (beam search does not promise it for every input: the
greedy prefix can drop out of the beam, though it rarely does).
"""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from conftest import SMOKE

import unimodal
from unimodal.cli import main
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.model.pretrained import TASKS, load_tasks, save_tasks, save_tokenizer, save_weights
from unimodal.recipe import load_recipe
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.text import BOS_ID, EOS_ID


@pytest.fixture(scope="module")
def model_dir(workspace, tmp_path_factory):
    """An untrained tiny model of the smoke stage 2, with its tokenizer and tasks, as an export holds them."""
    recipe = load_recipe(SMOKE / "stage2.yaml", check_files=False)
    tokenizer_cfg = recipe.tokenizer.model_copy(update={"text": workspace / recipe.tokenizer.text})
    tokenizer = MultimodalTokenizer(tokenizer_cfg, recipe.data.datasets)
    cfg = ModelConfig.from_preset("tiny", tokenizer.vocab_size, tokenizer.patch_dims)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    save_tokenizer(out, tokenizer_cfg)
    save_tasks(out, recipe.data.datasets, recipe.plugins)
    save_weights(out, {k: v.clone() for k, v in UnifiedModel(cfg).state_dict().items()}, cfg)  # tied head untied
    return out


@pytest.fixture(scope="module")
def files(workspace, tmp_path_factory):
    """The first PNG, WAV and MP4 of the workspace's held-out shards, by modality."""
    out = tmp_path_factory.mktemp("files")
    found = {}
    for modality, ext in (("image", "png"), ("audio", "wav"), ("video", "mp4")):
        with tarfile.open(workspace / "data" / "demo" / "test" / f"{modality}-000000.tar") as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(f".{ext}"))
            found[modality] = out / member.name
            found[modality].write_bytes(tar.extractfile(member).read())
    return found


@pytest.fixture(scope="module")
def pipe(model_dir):
    return unimodal.pipeline(model_dir)


def with_tasks(model_dir, tmp_path, datasets):
    """A copy of `model_dir` trained, as its tasks.json says, on `datasets`."""
    tmp_path.mkdir()
    for f in model_dir.iterdir():
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / TASKS).unlink()
    save_tasks(tmp_path, datasets, [])
    return tmp_path


def test_predict_prints_the_text_and_json_for_scripts(model_dir, files, capsys, one_thread):
    main(["predict", str(model_dir), "--image", str(files["image"]), "--max-new-tokens", "4"])
    assert capsys.readouterr().out.strip()
    main(["predict", str(model_dir), "--video", str(files["video"]), "--json", "--prompt", "what moves"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"text", "task", "prompt"}
    assert (out["task"], out["prompt"]) == ("moving-digits", "what moves")
    main(["predict", str(model_dir), "--audio", str(files["audio"]), "--json", "--beams", "2"])
    assert json.loads(capsys.readouterr().out)["prompt"] == "asr"


def log_probability(model: UnifiedModel, batch: dict, ids: torch.Tensor) -> float:
    """log p(ids | inputs) by teacher forcing: the sum over its tokens, EOS included."""
    memory, enc_sample = model.encode(batch)
    dec_in = torch.cat([torch.tensor([BOS_ID]), ids[:-1]])[None]
    logp = model.lm_head(model.decoder_states(dec_in, memory, enc_sample)[0]).float().log_softmax(-1)
    return logp.gather(1, ids[:, None]).sum().item()


@torch.no_grad()
def test_beam_search_with_one_beam_is_greedy_and_more_beams_score_at_least_as_high(pipe, files, one_thread):
    model = pipe.model
    for modality, path in files.items():
        _, batch = pipe.batch(**{modality: path})
        greedy = model.generate(batch, BOS_ID, EOS_ID, 12)[0]
        one, _ = model.beam_search(batch, BOS_ID, EOS_ID, 12, beams=1)
        assert torch.equal(one, greedy[: len(one)]) and not greedy[len(one) :].any()  # zeros after EOS
        ids, score = model.beam_search(batch, BOS_ID, EOS_ID, 12, beams=4)
        assert score == pytest.approx(log_probability(model, batch, ids), abs=1e-4)
        assert score >= log_probability(model, batch, one) - 1e-4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "{image}", "--task", "nope"], "--task nope: no such task"),
        (["--image", "{image}", "--task", "asr"], "--task asr reads audio, given image"),
        (["--image", "{dir}/x.bmp"], "--image {dir}/x.bmp: no modality decodes .bmp"),
        (["--image", "{audio}"], "--image {audio}: .wav is decoded as audio, not image"),
        (["--image", "{dir}/none.png"], "--image {dir}/none.png: no such file"),
        (["--image", "{dir}/bad.png"], "--image {dir}/bad.png: does not decode: undecodable png"),
        (["--image", "{image}", "--beams", "0"], "--beams 0: must be 1"),
        ([], "no input given"),
    ],
)
def test_errors_name_the_file_or_option(model_dir, files, tmp_path, capsys, args, message):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    names = {k: str(v) for k, v in files.items()} | {"dir": str(tmp_path)}
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(model_dir), *[a.format(**names) for a in args]])
    assert exit_.value.code == 2
    assert message.format(**names) in capsys.readouterr().err


def test_a_model_refuses_what_it_was_not_trained_on(model_dir, files, tmp_path, capsys):
    stage2 = load_tasks(model_dir)
    stage1 = with_tasks(model_dir, tmp_path / "stage1", stage2[:2])
    with pytest.raises(SystemExit, match="2"):
        main(["predict", str(stage1), "--audio", str(files["audio"])])
    assert "--audio: the model was trained on no task that reads audio (its tasks read image, text)" in (
        capsys.readouterr().err
    )
    twice = with_tasks(model_dir, tmp_path / "twice", [stage2[0], stage2[0].model_copy(update={"name": "again"})])
    with pytest.raises(SystemExit, match="2"):
        main(["predict", str(twice), "--image", str(files["image"])])
    assert "several tasks read image; pick one with --task: digit-captions (" in capsys.readouterr().err
    (tmp_path / "stage").mkdir()
    for name in ("model.safetensors", "config.json", TASKS):
        (tmp_path / "stage" / name).symlink_to(model_dir / name)
    with pytest.raises(SystemExit, match="2"):
        main(["predict", str(tmp_path / "stage"), "--image", str(files["image"])])
    assert "no tokenizer.json, sp.model: predictions need" in capsys.readouterr().err
