"""A throwaway demo workspace for benchmarks: real demo shards and a trained tokenizer.

Recipes name their paths relative to the repository root (`data/demo`,
`runs/demo/tokenizer`), so benchmarks build the same layout in a temporary
folder and run from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unimodal.demo.mixture import write_demo  # noqa: E402
from unimodal.tokenize.text import shard_texts, train_text_tokenizer  # noqa: E402


@contextmanager
def demo_workspace(scale: float = 0.1, vocab_size: int = 1024) -> Iterator[Path]:
    """Inside: the working directory is a fresh workspace holding data/demo and the tokenizer."""
    cwd = os.getcwd()
    with TemporaryDirectory() as tmp:
        ws = Path(tmp)
        write_demo(ws / "data" / "demo", scale=scale)
        shards = [str(s) for s in sorted((ws / "data" / "demo" / "train").glob("*.tar"))]
        train_text_tokenizer(shard_texts(shards), ws / "runs" / "demo" / "tokenizer", vocab_size=vocab_size)
        os.chdir(ws)
        try:
            yield ws
        finally:
            os.chdir(cwd)


def unimodal(*args: str) -> str:
    """Run the `unimodal` command (CPU accelerator, quiet wandb); its stdout, or exit with its output on failure."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_SILENT="true")
    run = subprocess.run([sys.executable, "-m", "unimodal.cli", *args], env=env, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"unimodal {' '.join(args)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    return run.stdout
