"""`unimodal report RUN_DIR`: a finished or running stage's metrics.jsonl as plots and a few lines of text.

For people who would rather look than read: loss per task, the achieved task
mix against its target, and throughput (tokens/s, MFU) over the steps, as
PNGs in RUN_DIR/plots/, and a summary on stdout and in RUN_DIR/report.txt.
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


def training_records(run_dir: Path) -> list[dict]:
    """The training records of metrics.jsonl (eval records, which carry no loss, left out)."""
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
    train = [r for r in records if "loss" in r]
    if not train:
        raise NoMetrics(f"{path}: no training record (one with a loss) yet")
    return train


def datasets(records: list[dict], prefix: str) -> list[str]:
    """Dataset names of the `prefix/<name>` keys, in first-seen order."""
    return list(dict.fromkeys(k.split("/", 1)[1] for r in records for k in r if k.startswith(prefix + "/")))


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps = [r["step"] for r in records if key in r]
    return steps, [r[key] for r in records if key in r]


def plot_loss(records: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in datasets(records, "loss"):
        ax.plot(*series(records, f"loss/{name}"), label=name)
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


def summary(run_dir: Path, records: list[dict]) -> str:
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
    records = training_records(run_dir)
    plots = run_dir / PLOTS
    plots.mkdir(exist_ok=True)
    written = []
    for name, draw in (("loss", plot_loss), ("mix", plot_mix), ("throughput", plot_throughput)):
        draw(records, plots / f"{name}.png")
        written.append(plots / f"{name}.png")
    text = summary(run_dir, records) + "\nplots: " + ", ".join(str(p) for p in written)
    (run_dir / SUMMARY).write_text(text + "\n")
    return text, written
