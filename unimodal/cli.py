"""The `unimodal` command.

unimodal data demo OUT_DIR               write the demo shards
unimodal data avmnist OUT_DIR            write the paired image + sound digits of recipes/osmd
unimodal data shifted OUT_DIR            the demo's digit scans inverted and noisy (recipes/adapt)
unimodal data inspect SHARDS... [--json] [--samples] [--limit N]
unimodal shards write (--manifest FILE.jsonl | --folder DIR) --out DIR
                      [--prefix NAME] [--max-count N] [--max-size 1G] [--workers K]
unimodal tokenizer train SHARDS... --out DIR
unimodal train RECIPE [--nproc N] [--set F=V ...] [--fresh]
unimodal curriculum CURRICULUM [--nproc N] [--set F=V ...] [--fresh]
unimodal plan RECIPE_OR_CURRICULUM [--simulate N] [--json] [--nproc N] [--set F=V ...]
unimodal eval RECIPE --checkpoint STAGE_DIR [--drop MODALITY ...] [--json FILE] [--set F=V ...]
unimodal export RUN_DIR OUT_DIR [--tag TAG]
unimodal predict MODEL_DIR (--image F | --audio F | --video F | --text T ...) [--task NAME] [--prompt P]
                 [--beams K] [--max-new-tokens N] [--json]
unimodal report RUN_DIR                  plots (loss per task, mix, throughput) and a summary of metrics.jsonl
unimodal demo                            all of the above on the demo data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from unimodal.commands.inspect import NoShards, format_report, inspect_shards, shard_urls
from unimodal.config import RecipeError
from unimodal.data.write import ShardWriteError, folder_samples, manifest_samples, size_in_bytes, summary, write_shards
from unimodal.modalities import modalities
from unimodal.modalities.text import TEXT
from unimodal.predict import PredictError, pipeline
from unimodal.recipe import load_recipe
from unimodal.train.launch import StageFailed, StageStopped

DEMO_DATA, DEMO_RUNS, DEMO_CURRICULUM = Path("data/demo"), Path("runs/demo"), Path("recipes/smoke/curriculum.yaml")


def cmd_data_demo(args) -> None:
    from unimodal.demo.mixture import write_demo

    counts = write_demo(args.out_dir, scale=args.scale, seed=args.seed, speech=args.speech)
    print(json.dumps(counts))


def cmd_data_shifted(args) -> None:
    from unimodal.demo.shifted import write_shifted

    print(json.dumps(write_shifted(args.out_dir, scale=args.scale, seed=args.seed, noise=args.noise)))


def cmd_data_avmnist(args) -> None:
    from unimodal.demo.avmnist import write_avmnist

    degradation = {
        k: v
        for k, v in (("noise", args.noise), ("occlusion", args.occlusion), ("copies", args.copies))
        if v is not None
    }
    counts = write_avmnist(args.out_dir, scale=args.scale, seed=args.seed, speech=args.speech, **degradation)
    print(json.dumps(counts))


def cmd_data_inspect(args) -> None:
    report = inspect_shards(shard_urls(args.shards), args.limit, args.samples)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def cmd_shards_write(args) -> None:
    started = time.perf_counter()
    samples = manifest_samples(args.manifest) if args.manifest else folder_samples(args.folder)
    entries = write_shards(samples, args.out, args.prefix, args.max_count, args.max_size, args.workers)
    print(summary(entries, args.out, args.prefix, time.perf_counter() - started))


def cmd_tokenizer_train(args) -> None:
    from unimodal.tokenize.text import shard_texts, train_text_tokenizer

    path = train_text_tokenizer(shard_texts(args.shards), args.out, args.vocab_size)
    print(f"wrote {path}")


def cmd_train(args) -> None:
    from unimodal.train.launch import run_stage

    run_stage(args.recipe, args.nproc, args.set, args.fresh)


def cmd_curriculum(args) -> None:
    from unimodal.train.curriculum import run_curriculum

    run_curriculum(args.curriculum, args.nproc, args.set, args.fresh)


def cmd_plan(args) -> None:
    from unimodal.commands.plan import format_plan, plan

    report = plan(args.recipe, args.nproc, args.set, args.simulate, args.probe)
    print(json.dumps(report, indent=2) if args.json else format_plan(report))


def cmd_eval(args) -> None:
    from unimodal.eval.harness import evaluate, load_model
    from unimodal.eval.report import format_table, log_to_run

    recipe = load_recipe(args.recipe, args.set)
    results = evaluate(recipe, load_model(args.checkpoint), drop=args.drop)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if logged := log_to_run(args.checkpoint, recipe, results, args.drop):
        print(f"logged to {' and '.join(logged)}")


def cmd_export(args) -> None:
    from unimodal.train.export import ExportError, export  # imports deepspeed: not for every `unimodal` command

    try:
        print(json.dumps(export(args.run, args.out_dir, args.tag)))
    except ExportError as err:
        fail(err)


def cmd_predict(args) -> None:
    inputs = {m.name: getattr(args, m.name) for m in modalities() if getattr(args, m.name) is not None}
    options = {"task": args.task, "prompt": args.prompt, "beams": args.beams, "max_new_tokens": args.max_new_tokens}
    p = pipeline(args.model_dir).predict(**options, **inputs)
    print(json.dumps({"text": p.text, "task": p.task, "prompt": p.prompt}) if args.json else p.text)


def cmd_report(args) -> None:
    from unimodal.train.report import NoMetrics, report  # imports matplotlib: not for every `unimodal` command

    try:
        print(report(args.run)[0])
    except NoMetrics as err:
        fail(err)


def cmd_demo(args) -> None:
    """Shards, tokenizer, a two-stage curriculum on `--nproc` ranks, evaluation, summary."""
    from unimodal.demo.mixture import write_demo
    from unimodal.eval.harness import evaluate, load_model
    from unimodal.eval.report import format_table
    from unimodal.tokenize.text import shard_texts, train_text_tokenizer
    from unimodal.train.curriculum import run_curriculum

    started = time.perf_counter()
    if not (DEMO_DATA / "index.json").is_file():
        print(f"[unimodal] writing demo shards to {DEMO_DATA}", flush=True)
        write_demo(DEMO_DATA, scale=args.scale)
    sp_model = DEMO_RUNS / "tokenizer" / "sp.model"
    if not sp_model.is_file():
        print(f"[unimodal] training the text tokenizer: {sp_model}", flush=True)
        train_text_tokenizer(
            shard_texts([str(p) for p in sorted((DEMO_DATA / "train").glob("*.tar"))]), sp_model.parent
        )
    stages = run_curriculum(args.curriculum, args.nproc, args.set)
    final = stages[-1].recipe
    results = evaluate(final, load_model(final.train.output_dir))
    done = [json.loads((s.recipe.train.output_dir / "done.json").read_text()) for s in stages]
    summary = {
        "world_size": done[-1]["world_size"],
        "zero_stage": done[-1]["zero_stage"],
        "stages": done,
        "datasets": {n: {k: r[k] for k in ("modality", "task", "metrics", "samples")} for n, r in results.items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (DEMO_RUNS / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(format_table(results))
    for d in done:
        print(f"{d['stage']}: {d['steps']} steps, {d['tokens_per_s']:.0f} tokens/s on {d['world_size']} ranks")
    print(f"summary: {DEMO_RUNS / 'summary.json'}  ({summary['wall_seconds']:.0f} s)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unimodal", description="Pretrain one Transformer on image, video, audio and text."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def launch_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--nproc", type=int, default=2, help="ranks on this machine (default 2)")
        q.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help="override a recipe field, e.g. train.steps=40",
        )

    def fresh_option(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--fresh",
            action="store_true",
            help="start over instead of resuming: an earlier run in the output directory is renamed OUT.TIMESTAMP, never deleted",
        )

    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    q = data.add_parser("demo", help="write the demo shards (digits as image, audio, video and text)")
    q.add_argument("out_dir", type=Path)
    q.add_argument("--scale", type=float, default=1.0, help="multiply the default sample counts")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--speech",
        action=argparse.BooleanOptionalAction,
        help="half the sounds espeak-ng speech, or DTMF tones only (default: speech where espeak-ng is installed)",
    )
    q.set_defaults(func=cmd_data_demo)
    q = data.add_parser(
        "avmnist", help="write AV-MNIST-style pairs: a degraded digit scan and its sound (train only), for OS-MD"
    )
    q.add_argument("out_dir", type=Path)
    q.add_argument("--scale", type=float, default=1.0, help="fraction of the scans used")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--noise", type=float, help="image noise std, a fraction of the pixel range (default 0: none)")
    q.add_argument("--occlusion", type=int, help="side of the black square hiding part of each scan, px (default 16)")
    q.add_argument("--copies", type=int, help="times each train scan is written, degraded afresh (default 2)")
    q.add_argument(
        "--speech",
        action=argparse.BooleanOptionalAction,
        help="half the sounds espeak-ng speech, or DTMF tones only (default: speech where espeak-ng is installed)",
    )
    q.set_defaults(func=cmd_data_avmnist)
    q = data.add_parser(
        "shifted", help="write the demo's digit scans inverted and noisy, a new domain for recipes/adapt"
    )
    q.add_argument("out_dir", type=Path)
    q.add_argument("--scale", type=float, default=1.0, help="fraction of the demo's scans")
    q.add_argument("--seed", type=int, default=0, help="the demo's seed: the same train/test split of the scans")
    q.add_argument("--noise", type=float, default=16.0, help="standard deviation of the pixel noise (0-255 scale)")
    q.set_defaults(func=cmd_data_shifted)
    q = data.add_parser("inspect", help="read shards as training would: fields, decode failures, broken shards")
    q.add_argument("shards", nargs="+", help="shard paths, brace patterns, globs or URLs")
    q.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    q.add_argument("--samples", action="store_true", help="list every sample's members with bytes and sha256")
    q.add_argument("--limit", type=int, metavar="N", help="stop after this many samples")
    q.set_defaults(func=cmd_data_inspect)

    shards = sub.add_parser("shards", help="shard utilities").add_subparsers(dest="shards_command", required=True)
    q = shards.add_parser("write", help="pack a JSONL manifest or a folder of files into WebDataset shards")
    source = q.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, metavar="FILE", help="JSONL, a sample a line: {ext: file, txt: text}")
    source.add_argument(
        "--folder", type=Path, metavar="DIR", help="files sharing a path stem are a sample (a/1.jpg, a/1.txt)"
    )
    q.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the shards and index.json")
    q.add_argument(
        "--prefix", default="shard", metavar="NAME", help="shard names: NAME-000000.tar, ... (default shard)"
    )
    q.add_argument(
        "--max-count", type=int, default=10_000, metavar="N", help="samples per shard at most (default 10000)"
    )
    q.add_argument(
        "--max-size", type=size_in_bytes, default="1G", metavar="BYTES", help="bytes per shard at most (default 1G)"
    )
    q.add_argument("--workers", type=int, default=1, metavar="K", help="shards written in parallel (default 1)")
    q.set_defaults(func=cmd_shards_write)

    tok = sub.add_parser("tokenizer", help="text tokenizer").add_subparsers(dest="tok_command", required=True)
    q = tok.add_parser("train", help="train SentencePiece on the text fields (.txt, .json strings) of shards")
    q.add_argument("shards", nargs="+", help="shard paths or brace patterns")
    q.add_argument("--out", type=Path, required=True, help="directory for sp.model")
    q.add_argument("--vocab-size", type=int, default=1024)
    q.set_defaults(func=cmd_tokenizer_train)

    q = sub.add_parser("train", help="train one stage")
    q.add_argument("recipe")
    launch_options(q)
    q.add_argument(
        "--resume", action="store_true", help="the default: continue from the latest checkpoint, if there is one"
    )
    fresh_option(q)
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("curriculum", help="run a curriculum's stages in order")
    q.add_argument("curriculum")
    launch_options(q)
    fresh_option(q)
    q.set_defaults(func=cmd_curriculum)

    q = sub.add_parser("plan", help="per stage and dataset: size, target mix, samples and tokens per step, epochs")
    q.add_argument("recipe", help="a stage recipe, or a curriculum (every stage is planned)")
    q.add_argument(
        "--simulate", type=int, default=0, metavar="N", help="also draw N tasks from the real sampler: the achieved mix"
    )
    q.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    q.add_argument("--nproc", type=int, default=2, help="ranks the stage will run on, all nodes together (default 2)")
    q.add_argument(
        "--probe",
        type=int,
        default=16,
        metavar="K",
        help="samples per dataset tokenized to measure lengths (default 16)",
    )
    q.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field, e.g. train.steps=40"
    )
    q.set_defaults(func=cmd_plan)

    q = sub.add_parser("eval", help="each dataset's held-out metrics (data.datasets.N.metrics) on its eval_shards")
    q.add_argument("recipe")
    q.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="a stage's output dir or an exported model (holding model.safetensors)",
    )
    q.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="MODALITY",
        help="leave this input modality out of every example (repeatable): missing-modality evaluation",
    )
    q.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    q.add_argument("--json", help="also write the results here")
    q.set_defaults(func=cmd_eval)

    q = sub.add_parser("export", help="consolidate a run's ZeRO checkpoint into a model that loads without DeepSpeed")
    q.add_argument("run", type=Path, help="a run's output_dir, or its checkpoints/ directory (read weights_only)")
    q.add_argument("out_dir", type=Path, help="where model.safetensors, config.json, sp.model and tokenizer.json go")
    q.add_argument("--tag", help="the checkpoint to export, e.g. step00000100 (default: the one `latest` names)")
    q.set_defaults(func=cmd_export)

    q = sub.add_parser("predict", help="the text a trained model writes for your files: a caption, a transcript, ...")
    q.add_argument("model_dir", type=Path, help="an `unimodal export` (model, tokenizer and tasks files)")
    for m in modalities():
        if m.name == TEXT:
            q.add_argument("--text", metavar="T", help="a text input, given as the text itself")
        else:
            q.add_argument(f"--{m.name}", metavar="FILE", help=f"a {m.name} file ({', '.join(m.extensions)})")
    q.add_argument("--task", help="the task to prompt, by dataset or task name (default: the one reading these inputs)")
    q.add_argument("--prompt", help="the text prompt instead of the task's")
    q.add_argument("--beams", type=int, default=1, help="beam search with K beams (default 1: greedy)")
    q.add_argument("--max-new-tokens", type=int, help="most tokens written (default: as held-out evaluation)")
    q.add_argument("--json", action="store_true", help='print {"text": ..., "task": ..., "prompt": ...}')
    q.set_defaults(func=cmd_predict)

    q = sub.add_parser(
        "report", help="plot a run's metrics.jsonl (PNGs in RUN_DIR/plots) and summarise it (RUN_DIR/report.txt)"
    )
    q.add_argument("run", type=Path, help="a stage's output_dir")
    q.set_defaults(func=cmd_report)

    q = sub.add_parser("demo", help="the whole flow on the demo data")
    q.add_argument("--curriculum", default=str(DEMO_CURRICULUM))
    q.add_argument("--scale", type=float, default=1.0, help="demo data size multiplier")
    launch_options(q)
    q.set_defaults(func=cmd_demo)
    return p


def fail(err: Exception) -> None:
    """Input the command cannot use: the message (which names the file and field), status 2."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (RecipeError, ShardWriteError, NoShards, PredictError) as err:
        fail(err)
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except StageStopped as err:  # preempted: a clean stop, not a failure
        print(err, file=sys.stderr)


if __name__ == "__main__":
    main()
