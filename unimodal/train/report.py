"""`unimodal report RUN_DIR`: a finished or running stage's metrics.jsonl as plots and a few lines of text.

For people who would rather look than read: loss per task (with the held-out
loss of validation during training, `train.eval_every`, beside it), the
achieved task mix against its target, and throughput (tokens/s, MFU) over the
steps, as PNGs in RUN_DIR/plots/, and a summary on stdout and in RUN_DIR/report.txt.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt

PLOTS, SUMMARY = "plots", "report.txt"


class NoMetrics(ValueError):
    """The run directory holds no training records to report on."""


def read_records(run_dir: Path) -> list[dict]:
    """Every record of metrics.jsonl: training, validation (`val/...`) and eval records."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise NoMetrics(f"{path}: not found (a run's output_dir holds it once it has logged)")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise NoMetrics(f"{path}:{n}: not JSON ({err.msg})") from None
    return records


def training_records(records: list[dict], run_dir: Path) -> list[dict]:
    """The training records (validation and eval records, which carry no `loss`, left out)."""
    train = [r for r in records if "loss" in r]
    if not train:
        raise NoMetrics(f"{run_dir / 'metrics.jsonl'}: no training record (one with a loss) yet")
    return train


def val_losses(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{dataset: (steps, held-out losses)} from the validation records."""
    keys = dict.fromkeys(k for r in records for k in r if k.startswith("val/") and k.endswith("/loss"))
    return {k.removeprefix("val/").removesuffix("/loss"): series(records, k) for k in keys}


def datasets(records: list[dict], prefix: str) -> list[str]:
    """Dataset names of the `prefix/<name>` keys, in first-seen order."""
    return list(dict.fromkeys(k.split("/", 1)[1] for r in records for k in r if k.startswith(prefix + "/")))


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps = [r["step"] for r in records if key in r]
    return steps, [r[key] for r in records if key in r]


def plot_loss(records: list[dict], path: Path, held_out: dict[str, tuple[list[int], list[float]]]) -> None:
    """Training loss per task, and each task's held-out loss (validation) dotted in its colour."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = {}
    for name in datasets(records, "loss"):
        colours[name] = ax.plot(*series(records, f"loss/{name}"), label=name)[0].get_color()
    for name, (steps, losses) in held_out.items():
        ax.plot(steps, losses, color=colours.get(name), linestyle=":", marker="o")
    if held_out:
        ax.plot([], [], color="gray", linestyle=":", marker="o", label="held-out (validation), in its task's colour")
    ax.plot(*series(records, "loss"), color="black", linestyle="--", label="step loss (sum over objectives)")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="Loss per task")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mix(records: list[dict], path: Path) -> None:
    """Achieved share of samples per dataset, stacked; the target mix as dashed boundaries."""
    names = datasets(records, "mix")
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.stackplot(steps, [[r[f"mix/{n}"] for r in records] for n in names], labels=names, alpha=0.8)
    edge = [0.0] * len(records)
    for n in names[:-1]:
        edge = [e + r[f"mix_target/{n}"] for e, r in zip(edge, records)]
        ax.plot(steps, edge, color="black", linestyle="--", linewidth=1)
    ax.plot([], [], color="black", linestyle="--", linewidth=1, label="target mix")
    ax.set(
        xlabel="step",
        ylabel="share of samples",
        ylim=(0, 1),
        xlim=(steps[0], steps[-1]),
        title="Task mix per logging window",
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_throughput(records: list[dict], path: Path) -> None:
    """tokens/s above, MFU (where the device's peak is known) below: one scale each."""
    panels = [("tokens_per_s", "tokens/s, all ranks", 1.0)]
    if any("mfu" in r for r in records):
        panels.append(("mfu", "MFU (%)", 100.0))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 4.5), sharex=True, squeeze=False)
    for ax, (key, label, scale) in zip(axes[:, 0], panels):
        steps, values = series(records, key)
        ax.plot(steps, [scale * v for v in values])
        ax.set(ylabel=label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("Throughput")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return sum(values) / len(values) if values else None


def summary(run_dir: Path, records: list[dict], held_out: dict[str, tuple[list[int], list[float]]]) -> str:
    last = records[-1]
    done_file = run_dir / "done.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else None
    state = (
        f"finished, {done['world_size']} ranks, ZeRO-{done['zero_stage']}, {done['precision']}"
        if done
        else "not finished"
    )
    lines = [f"run: {run_dir} ({state})", f"steps: {last['step']} logged in {len(records)} records"]
    losses = ", ".join(f"{n} {last[f'loss/{n}']:.4f}" for n in datasets([last], "loss"))
    lines.append(f"final loss: {last['loss']:.4f}" + (f" ({losses})" if losses else ""))
    if held_out:
        at = max(steps[-1] for steps, _ in held_out.values())
        lines.append(f"held-out loss at step {at}: " + ", ".join(f"{n} {v[-1]:.4f}" for n, (_, v) in held_out.items()))
    throughput = (
        f"tokens/s: {mean(records, 'tokens_per_s'):.0f} mean, samples/s {mean(records, 'samples_per_s'):.1f} mean"
    )
    if (mfu := mean(records, "mfu")) is not None:
        throughput += f", MFU {100 * mfu:.2f}% mean"
    lines.append(throughput)
    wait = sum(r["data_wait_s"] for r in records)
    lines.append(
        f"padding efficiency: {mean(records, 'padding_efficiency'):.3f} mean; waiting for data: {wait:.1f} s per rank in all"
    )
    mix = ", ".join(
        f"{n} {mean(records, f'mix/{n}'):.2f} ({last[f'mix_target/{n}']:.2f})" for n in datasets(records, "mix")
    )
    lines.append(f"mix, achieved mean (target at the end): {mix}")
    skipped = {k.removeprefix("skipped/"): v for k, v in last.items() if k.startswith("skipped/")}  # totals so far
    lines.append("skipped samples: " + (", ".join(f"{k} {v}" for k, v in skipped.items()) if skipped else "none"))
    if "peak_memory_mib" in last:
        lines.append(f"peak memory: {last['peak_memory_mib']:.0f} MiB (rank 0)")
    return "\n".join(lines)


def report(run_dir: str | Path) -> tuple[str, list[Path]]:
    """Write the plots and report.txt for `run_dir`; (the summary text, the PNG paths)."""
    run_dir = Path(run_dir)
    every = read_records(run_dir)
    records, held_out = training_records(every, run_dir), val_losses(every)
    plots = run_dir / PLOTS
    plots.mkdir(exist_ok=True)
    plot_loss(records, plots / "loss.png", held_out)
    plot_mix(records, plots / "mix.png")
    plot_throughput(records, plots / "throughput.png")
    written = [plots / f"{name}.png" for name in ("loss", "mix", "throughput")]
    text = summary(run_dir, records, held_out) + "\nplots: " + ", ".join(str(p) for p in written)
    (run_dir / SUMMARY).write_text(text + "\n")
    return text, written
