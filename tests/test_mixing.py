"""Task balancing: every strategy hits its target mix, draws resume exactly, loss-aware mixes steer workers."""

from __future__ import annotations

import json
import shutil
import socket
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import SMOKE, unimodal

from unimodal.config import RecipeError
from unimodal.data.loader import build_train_loader
from unimodal.data.mix.balancer import Balancer
from unimodal.data.mix.board import MixBoard
from unimodal.data.mix.policies import MixPolicy, bounded, loss_aware_mix
from unimodal.data.mix.sampler import STRIDE, cumulative, micro_sampler
from unimodal.recipe import load_recipe
from unimodal.train.comm import all_reduce_sum

DRAWS = 20_000
STAGE2 = ["digit-captions", "number-words", "spoken-digits", "moving-digits"]


def achieved(target: np.ndarray, draws: int = DRAWS, first: int = 0, per_micro: int = 1) -> np.ndarray:
    """The shares of `draws` draws: `per_micro` from each micro-batch's sequence, from micro-batch `first` on."""
    sampler, cum, picks = micro_sampler(0, first), cumulative(target), []
    for i in range(draws):
        sampler.draws = (first + i // per_micro) * STRIDE + i % per_micro
        picks.append(sampler.draw(cum))
    return np.bincount(picks, minlength=len(target)) / draws


def assert_hits(target: np.ndarray) -> None:
    for first, per_micro in ((0, 1), (1000, 7), (3, 40)):
        assert np.abs(achieved(target, first=first, per_micro=per_micro) - target).max() < 0.01, (first, per_micro)


def sampling(value: str) -> list[str]:
    return [f"data.sampling={value}"]


def test_weights_hit_their_mix(in_workspace):
    policy = MixPolicy(load_recipe(SMOKE / "stage2.yaml", ["data.datasets.0.weight=3"]))
    target = policy.target(0)
    assert np.allclose(target, np.array([3, 0.5, 1, 1]) / 5.5)
    assert_hits(target)


@pytest.mark.parametrize("temperature", [1, 5])
def test_temperature_follows_index_sizes(in_workspace, temperature):
    index = json.loads((in_workspace / "data/demo/train/index.json").read_text())["shards"]
    prefix = ["image", "text", "audio", "video"]  # the stage-2 datasets' shards, in order
    sizes = np.array([sum(e["samples"] for e in index if e["name"].startswith(p)) for p in prefix], dtype=float)
    recipe = load_recipe(SMOKE / "stage2.yaml", sampling(f"{{strategy: temperature, temperature: {temperature}}}"))
    target = MixPolicy(recipe).target(0)
    expected = sizes ** (1 / temperature)
    assert np.allclose(target, expected / expected.sum())
    assert_hits(target)


def test_temperature_needs_every_size(in_workspace):
    shards = "pipe:cat data/demo/train/text-{000000..000001}.tar"
    with pytest.raises(
        RecipeError, match=r"stage2.yaml: data.sampling.temperature .* data.datasets.1 \(number-words\) is unknown"
    ):
        load_recipe(
            SMOKE / "stage2.yaml",
            [f"data.datasets.1.shards={shards}", *sampling("{strategy: temperature, temperature: 2}")],
        )


def test_schedule_and_ramp_at_a_step(in_workspace):
    recipe = load_recipe(
        SMOKE / "stage2.yaml",
        sampling(
            "{schedule: [{step: 0, weights: {spoken-digits: 0}}, {step: 100, weights: {spoken-digits: 2}}],"
            " ramp: {dataset: moving-digits, steps: 200}}"
        ),
    )
    policy = MixPolicy(recipe)
    assert policy.target(0)[2:].tolist() == [0, 0]  # both start at 0
    target = policy.target(50)  # spoken-digits halfway from 0 to 2, moving-digits a quarter in
    assert np.allclose(target, np.array([0.5, 0.5, 1.0, 0.25]) / 2.25)
    assert_hits(target)
    assert np.allclose(policy.target(10_000), np.array([0.5, 0.5, 2, 1]) / 4)


@pytest.mark.parametrize(
    "value, words",
    [
        ("{ramp: {dataset: nope, steps: 10}}", "sampling.ramp.0.dataset: no dataset named 'nope'"),
        ("{strategy: weights, update_every: 5}", "update_every: only for strategy loss_aware"),
        ("{strategy: temperature}", "strategy temperature needs `temperature`"),
        ("{strategy: loss_aware, min_weight: 0.3}", r"needs 4 x min_weight <= 1"),
        ("{schedule: [{step: 5, weights: {}}, {step: 2, weights: {}}]}", "steps must increase"),
        (
            "{ramp: [{dataset: digit-captions, steps: 5}, {dataset: number-words, steps: 5},"
            " {dataset: spoken-digits, steps: 5}, {dataset: moving-digits, steps: 5}]}",
            "at step 0 the schedule and ramps leave every dataset at 0",
        ),
    ],
)
def test_bad_sampling_sections_name_the_field(in_workspace, value, words):
    with pytest.raises(RecipeError, match=words):
        load_recipe(SMOKE / "stage2.yaml", sampling(value))


def test_loss_aware_favours_the_slowest_falling_task_within_bounds(in_workspace):
    recipe = load_recipe(SMOKE / "stage2.yaml", sampling("{strategy: loss_aware, min_weight: 0.1, max_weight: 0.5}"))
    policy = MixPolicy(recipe)
    previous = np.array([2.0, 2.0, 2.0, 2.0])
    current = np.array([1.98, 1.9, 1.6, 1.0])  # the first falls slowest, the last fastest
    mix = loss_aware_mix(policy.prior, previous, current, recipe.data.sampling)
    assert list(np.argsort(-mix)) == [0, 1, 2, 3]
    assert mix.sum() == pytest.approx(1) and mix.min() >= 0.1 - 1e-12 and mix.max() <= 0.5 + 1e-12
    # through the board, as a worker sees it: the prior until the mix applies, then the mix
    board = MixBoard(4, lag=3, update_every=1)
    board.finalise(0)
    board.publish(3, mix)
    policy = MixPolicy(recipe, board)
    assert np.allclose(policy.target(2), policy.prior) and np.allclose(policy.target(3), mix)
    assert_hits(policy.target(3))
    wide = bounded(np.array([0.97, 0.01, 0.01, 0.01]), 0.05, 0.6)
    assert np.allclose(wide, [0.6, 0.4 / 3, 0.4 / 3, 0.4 / 3])


def test_a_micro_batchs_draws_depend_on_the_seed_and_its_global_index_only():
    cum = cumulative(np.array([0.5, 0.3, 0.2]))
    sampler = micro_sampler(7, 12)
    draws = [sampler.draw(cum) for _ in range(200)]
    again = micro_sampler(7, 12)  # another worker, rank or topology: the same draws
    assert [again.draw(cum) for _ in range(200)] == draws
    assert abs(np.mean(np.array(draws) == 0) - 0.5) < 0.02  # each micro-batch's draws are spread by the mix
    other = micro_sampler(7, 13)
    assert draws != [other.draw(cum) for _ in range(200)]


def test_weyl_sequence_never_draws_a_task_at_zero():
    cum = cumulative(np.array([0.7, 0.3, 0.0]))
    sampler = micro_sampler(3, 0)
    sampler.draws = (1 << 64) - 5  # past the 64-bit wrap
    assert {sampler.draw(cum) for _ in range(1000)} == {0, 1}


def test_logged_mix_is_the_window_mean_of_the_target_and_the_trained_share(in_workspace):
    recipe = load_recipe(SMOKE / "stage1.yaml", sampling("{ramp: {dataset: number-words, steps: 4}}"))
    balancer = Balancer(recipe, build_train_loader(recipe, 0).dataset.board, 0, all_reduce_sum)
    for done in (1, 2, 3, 4):  # number-words at factors 0, 1/4, 1/2, 3/4: shares 0, 1/5, 1/3, 3/7
        balancer.step(done)
    rec = balancer.record({"samples/digit-captions": 30, "samples/number-words": 10})
    assert rec["mix_target/number-words"] == pytest.approx((0 + 1 / 5 + 1 / 3 + 3 / 7) / 4)
    assert rec["mix/digit-captions"] == 0.75 and rec["mix/number-words"] == 0.25
    balancer.step(5)
    assert balancer.record({"samples/digit-captions": 1})["mix_target/number-words"] == 0.5  # a new window


# --- loss-aware mixes through real DataLoader workers -------------------------------------------

ACCUMULATION, STEPS, STOP = 2, 20, 10


@pytest.fixture
def one_rank():
    """A one-rank process group: the Balancer all-reduces its loss sums."""
    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def made_up_losses(dataset: torch.Tensor, step: int) -> torch.Tensor:
    """digit-captions' loss stays flat; number-words' falls fast."""
    return torch.where(
        dataset == 0,
        torch.full_like(dataset, 2.0, dtype=torch.float64),
        torch.full_like(dataset, 2.0 * 0.8**step, dtype=torch.float64),
    )


def trainer(recipe, start: dict | None, until: int) -> tuple[list[list[str]], list[np.ndarray], dict]:
    """Pull batches as the training loop does; per step the tasks drawn and the target; the state at `until`."""
    loader = build_train_loader(recipe, 0, 1, ACCUMULATION)
    step = 0
    if start:
        step = start["step"]
        loader.load_state_dict(start["loader"])
    balancer = Balancer(recipe, loader.dataset.board, step, all_reduce_sum)
    if start:
        balancer.load_state_dict(start["balance"])
    batches, tasks, targets = iter(loader), [], []
    while step < until:
        drawn = []
        for _ in range(ACCUMULATION):
            batch = next(batches)
            drawn += [k.split("/", 1)[0] for k in batch["meta"]["keys"]]
            balancer.add(batch["dataset"], made_up_losses(batch["dataset"], step))
        tasks.append(drawn)
        targets.append(balancer.policy.target(step))
        step += 1
        balancer.step(step)
    return tasks, targets, {"step": step, "loader": loader.state_dict(), "balance": balancer.state_dict()}


def test_loss_aware_mix_reaches_workers_and_resumes_exactly(in_workspace, one_rank):
    recipe = load_recipe(
        SMOKE / "stage1.yaml",
        [
            "data.workers=2",
            "data.batch_tokens=300",
            "data.pack_length=128",
            "data.shuffle_buffer=4",
            *sampling("{strategy: loss_aware, update_every: 2, min_weight: 0.25, max_weight: 0.75}"),
        ],
    )
    lag = -(-(4 * 2 + 1) // ACCUMULATION)  # 4 batches prefetched by each of 2 workers, + 1
    tasks, targets, _ = trainer(recipe, None, STEPS)
    # the first window (steps 1-2) only measures; the mix made after step 4 applies from step 4 + lag
    first = 4 + lag
    assert all(np.allclose(t, [0.5, 0.5]) for t in targets[:first])
    assert all(np.allclose(t, [0.75, 0.25]) for t in targets[first:])  # the flat task, up to max_weight
    late = Counter(task for drawn in tasks[first:] for task in drawn)
    assert late["digit-captions"] / sum(late.values()) > 0.65  # what the workers built follows it

    _, _, stopped = trainer(recipe, None, STOP)  # a fresh run, stopped with mixes published but not yet applied
    assert any(apply_from > STOP for apply_from, _ in stopped["balance"]["live"])
    resumed, resumed_targets, _ = trainer(recipe, stopped, STEPS)
    assert resumed == tasks[STOP:]
    assert all(np.array_equal(a, b) for a, b in zip(resumed_targets, targets[STOP:]))


# --- a real 2-rank run ---------------------------------------------------------------------------

RUN = [
    "--nproc",
    "2",
    "--set",
    "train.steps=16",
    "--set",
    "train.checkpoint_every=8",
    "--set",
    "logging.every=1",
    "--set",
    "data.sampling={strategy: loss_aware, update_every: 2, min_weight: 0.2, max_weight: 0.8}",
]


def test_loss_aware_training_logs_the_mix_and_resumes_bit_exact(workspace):
    a = workspace / "runs" / "mixing-test" / "a"
    result = unimodal("train", str(SMOKE / "stage1.yaml"), *RUN, "--set", f"train.output_dir={a}", cwd=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    recs = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    names = ("digit-captions", "number-words")
    for r in recs:
        assert sum(r[f"mix/{n}"] for n in names) == pytest.approx(1)
        assert all(0.2 - 1e-9 <= r[f"mix_target/{n}"] <= 0.8 + 1e-9 for n in names)
    assert recs[0]["mix_target/digit-captions"] == 0.5  # the prior, until the first loss-aware mix applies
    assert any(r["mix_target/digit-captions"] != 0.5 for r in recs)

    b = a.parent / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step00000016")
    (b / "checkpoints" / "latest").write_text("step00000008")
    (b / "done.json").unlink()
    result = unimodal(
        "train", str(SMOKE / "stage1.yaml"), *RUN, "--resume", "--set", f"train.output_dir={b}", cwd=workspace
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    again = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    keys = ["loss"] + [f"{k}/{n}" for k in ("mix", "mix_target", "samples") for n in names]
    assert [[r.get(k) for k in keys] for r in again] == [[r.get(k) for k in keys] for r in recs]
