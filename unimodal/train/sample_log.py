"""Which samples each rank trained on, step by step: an audit of the data split.

With `logging.sample_log: true` every rank writes OUTPUT_DIR/samples/rank<R>.jsonl,
one line per micro-batch: `{"step", "micro", "keys", "epochs", "draws", "trained"}`
(the run's global micro-batch, "dataset/key" names and the stream epoch each
sample came from, the dataset indices of the tasks the batch drew, in order;
`trained` is false for a batch skipped for a non-finite loss). With it one can check that a multi-node
job read every sample once per epoch, or find the batch behind a loss spike.

Lines are flushed with each checkpoint. A resumed run first drops the lines of
steps after its checkpoint (the killed run's, which it trains again), from
every rank's file, those of ranks a smaller world no longer has too, so the
files always read as one run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def keep_until(path: Path, step: int) -> None:
    """Drop the lines of steps after `step` from a rank's file."""
    lines = path.read_text().splitlines(keepends=True)  # a kill can leave the last one cut short
    kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class SampleLog:
    def __init__(self, out_dir: Path, rank: int, world: int, step: int, enabled: bool):
        self.file = None
        if not enabled:
            return
        folder = out_dir / "samples"
        path = folder / f"rank{rank}.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        if step:
            gone = [p for p in folder.glob("rank*.jsonl") if int(p.stem[4:]) >= world] if rank == 0 else []
            for log in [path, *gone]:
                if log.is_file():
                    keep_until(log, step)
        self.file = open(path, "w" if not step else "a")  # noqa: SIM115 (open for the run; closed by close())

    def add(self, step: int, meta: dict, trained: bool) -> None:
        """Record a micro-batch of `step` (counted from 1)."""
        if self.file:
            self.file.write(
                json.dumps(
                    {
                        "step": step,
                        "micro": meta["micro"],
                        "keys": meta["keys"],
                        "epochs": meta["epochs"],
                        "draws": meta["draws"],
                        "trained": trained,
                    }
                )
                + "\n"
            )

    def flush(self) -> None:
        if self.file:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file:
            self.file.close()
