"""UnifiedModel on tiny synthetic mixed-modality batches."""

import pytest
import torch
import torchaudio

from unimodal.modalities.audio import AudioPatcher, AudioTokens
from unimodal.model import PRESETS, ModelConfig, UnifiedModel, count_parameters
from unimodal.tokenize.sequence import IGNORE_INDEX, Segment, TokenSequence, collate, collate_rows

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VOCAB, BOS, EOS = 64, 1, 2
PATCH_DIMS = {"image": 12, "audio": 8, "video": 16}


def make_cfg(**overrides) -> ModelConfig:
    return ModelConfig.from_preset("tiny", VOCAB, PATCH_DIMS, max_positions=64, **overrides)


def make_seq(gen: torch.Generator, spec: list[tuple[str, int]], target_len: int) -> TokenSequence:
    """A sample with segments given as (modality, length) and a random target ending in EOS."""
    segments = [
        Segment(m, torch.randint(3, VOCAB, (n,), generator=gen))
        if m == "text"
        else Segment(m, torch.randn(n, PATCH_DIMS[m], generator=gen))
        for m, n in spec
    ]
    target = torch.cat([torch.randint(3, VOCAB, (target_len - 1,), generator=gen), torch.tensor([EOS])])
    return TokenSequence(segments, target, dataset=0)


def mixed_seqs(seed: int = 0) -> list[TokenSequence]:
    gen = torch.Generator().manual_seed(seed)
    return [
        make_seq(gen, [("image", 6), ("text", 3)], 5),
        make_seq(gen, [("text", 4), ("audio", 5)], 7),
        make_seq(gen, [("video", 4), ("text", 2), ("image", 2)], 4),
        make_seq(gen, [("text", 7)], 6),
    ]


def batch_of(seqs: list[TokenSequence]) -> dict[str, torch.Tensor]:
    return collate(seqs, PATCH_DIMS, BOS)


@pytest.fixture
def model() -> UnifiedModel:
    torch.manual_seed(0)
    return UnifiedModel(make_cfg())


def test_forward_backward_finite(model):
    seqs = mixed_seqs()
    out = model(batch_of(seqs))
    assert torch.isfinite(out["loss"])
    assert out["sample_loss"].shape == (4,) and torch.isfinite(out["sample_loss"]).all()
    assert out["n_tokens"].item() == sum(s.dec_len for s in seqs)
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for m in PATCH_DIMS:
        assert model.stems[m][1].weight.grad.abs().sum() > 0, m


def test_absent_modality_gets_zero_grad(model):
    model(batch_of(mixed_seqs()[:2]))["loss"].backward()  # image and audio, no video
    assert model.stems["image"][1].weight.grad.abs().sum() > 0
    assert model.stems["video"][1].weight.grad.abs().sum() == 0


def test_padding_invariance(model):
    gen = torch.Generator().manual_seed(1)
    short = make_seq(gen, [("image", 3), ("text", 2), ("audio", 2)], 3)
    # Second in the batch, behind a sample with image and audio rows of its own,
    # so this also checks that patch rows land at their own sample's positions.
    long = make_seq(gen, [("image", 4), ("text", 5), ("audio", 9), ("video", 4)], 9)
    model.eval()
    alone, both = batch_of([short]), batch_of([long, short])
    mem_alone, _ = model.encode(alone)
    mem_both, _ = model.encode(both)
    torch.testing.assert_close(mem_both[1, : short.enc_len], mem_alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(model(both)["sample_loss"][1], model(alone)["sample_loss"][0], atol=1e-5, rtol=0)


def test_decoder_is_causal(model):
    batch = batch_of(mixed_seqs())
    memory, enc_mask = model.encode(batch)
    dec_in = batch["dec_in"]
    changed = dec_in.clone()
    changed[:, 3] = (changed[:, 3] + 1) % VOCAB
    before = model.lm_head(model.decoder_states(dec_in, memory, enc_mask))
    after = model.lm_head(model.decoder_states(changed, memory, enc_mask))
    torch.testing.assert_close(after[:, :3], before[:, :3])
    assert not torch.allclose(after[:, 3], before[:, 3])


def test_overfit_then_generate(model):
    batch = batch_of(mixed_seqs())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(100):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    generated = model.generate(batch, BOS, EOS, max_new_tokens=20)
    expected = batch["dec_out"].masked_fill(batch["dec_out"] == IGNORE_INDEX, 0)
    assert torch.equal(generated, expected)


def test_activation_checkpointing_matches(model):
    batch = batch_of(mixed_seqs())
    ckpt = UnifiedModel(make_cfg(activation_checkpointing=True))
    ckpt.load_state_dict(model.state_dict())
    for m in (model, ckpt):
        m(batch)["loss"].backward()
    for (name, p), q in zip(model.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_bf16(model):
    batch = batch_of(mixed_seqs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # DeepSpeed's bf16 mode casts the weights instead; the batch stays fp32.
    assert torch.isfinite(model.bfloat16()(batch)["loss"])


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig.from_preset("tiny", VOCAB, {"image": 12})
    with pytest.raises(ValueError):
        make_cfg(n_heads=5)
    with pytest.raises(ValueError):
        make_cfg(bogus=1)


@pytest.mark.parametrize(
    "name, lo, hi",
    [("tiny", 0, 5e6), ("small", 40e6, 80e6), ("base", 200e6, 300e6), ("large", 0.8e9, 1.3e9)],
)
def test_preset_sizes(name, lo, hi):
    assert set(PRESETS) == {"tiny", "small", "base", "large"}
    cfg = ModelConfig.from_preset(name, 8000, {"image": 768, "audio": 256, "video": 1536})
    with torch.device("meta"):
        n = count_parameters(UnifiedModel(cfg))
    assert lo <= n <= hi


def test_packed_rows_keep_samples_apart(model):
    """Samples packed into shared rows get exactly the losses and gradients they get alone."""
    seqs = mixed_seqs()
    padded = model(batch_of(seqs))
    packed_batch = collate_rows([[seqs[0], seqs[1]], [seqs[2], seqs[3]]], PATCH_DIMS, BOS)
    assert packed_batch["enc_mask"].shape[0] == 2
    packed = model(packed_batch)
    assert torch.allclose(packed["sample_loss"], padded["sample_loss"], atol=1e-5)
    assert torch.allclose(packed["loss"], padded["loss"], atol=1e-5)
    grads = []
    for out in (padded, packed):
        model.zero_grad()
        out["loss"].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))


def test_audio_patches_use_torchaudios_mel_spectrogram():
    """The patcher's mel power spectrogram equals torchaudio's MelSpectrogram (power 2)."""
    cfg = AudioTokens(f_max=4000)
    wave = torch.randn(int(cfg.seconds * cfg.sample_rate), generator=torch.Generator().manual_seed(0))
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop, n_mels=cfg.n_mels, f_max=cfg.f_max
    )(wave)
    torch.testing.assert_close(AudioPatcher(cfg).mel(wave), reference, rtol=1e-5, atol=1e-5)
