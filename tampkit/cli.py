"""The `tamp` command. Bad input: one line naming the field and what is allowed, exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tampkit.core.errors import UsageError

if TYPE_CHECKING:
    from tampkit.pipeline.schema import Knob


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; we print one line
        print(f"tamp: error: {message}", file=sys.stderr)
        sys.exit(2)


def _store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    parser.add_argument("--workdir", type=Path, default=Path("artifacts"), help="artifact store (default artifacts)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S prune.sparsity=0.6 (value parsed as YAML)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


#: `tamp prune` flags every run needs (no default is a good guess).
REQUIRED = ("model.name", "prune.sparsity")


def _dest(key: str) -> str:
    return key.replace(".", "__")


def _flag_knobs() -> list[Knob]:
    from tampkit.pipeline.schema import KNOBS

    return [k for k in KNOBS if k.flag]


def _add_knob_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per schema knob that has one; type errors are argparse's, the rest the schema's."""
    for knob in _flag_knobs():
        shown = knob.default if knob.key not in REQUIRED else None
        text = knob.help + (f"; one of {', '.join(knob.allowed)}" if knob.allowed else "")
        text += (f" (default {shown})" if shown is not None else "") + f" [params.yaml {knob.key}]"
        if knob.kind is bool:
            parser.add_argument(knob.flag, dest=_dest(knob.key), action="store_const", const=not knob.default,
                                default=None, help=text)
        else:
            parser.add_argument(knob.flag, dest=_dest(knob.key), type=knob.kind, default=None, metavar=knob.name.upper(),
                                required=knob.key in REQUIRED, help=text)


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """`-S KEY=VALUE` pairs as {key: value}, each value read as YAML (0.6, true, [a, b])."""
    import yaml

    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError("--set", f"expected KEY=VALUE, got '{pair}'")
        result[key] = yaml.safe_load(value)
    return result


def _print_record(name: str, record: dict) -> None:
    if record["reused"]:
        print(f"{name}: up to date ({record['fingerprint'][:12]})")
    else:
        blocks = (f", blocks read back {record['blocks_loaded']}, computed {record['blocks_computed']}"
                  if "blocks_loaded" in record else "")
        print(f"{name}: done in {record['seconds']:.1f}s ({record['fingerprint'][:12]}{blocks})")


def _run_stages(args: argparse.Namespace) -> None:
    from tampkit.pipeline.layout import Layout
    from tampkit.pipeline.params import load_params
    from tampkit.pipeline.run import run_stage, run_stages

    params = load_params(args.params, parse_overrides(args.set))
    layout = Layout.under(args.workdir)
    progress = not args.no_progress
    if args.command == "stage":
        _print_record(args.name, run_stage(args.name, params, layout, progress=progress, force=args.force))
    else:
        run_stages(params, layout, progress=progress, on_stage=_print_record, force=tuple(args.force))


def _prune(args: argparse.Namespace) -> None:
    from tampkit.pipeline.params import params_from_flat
    from tampkit.pipeline.prune_command import default_out, prune_to_folder
    from tampkit.pipeline.schema import KNOB
    from tampkit.reporting.report import summary_table
    from tampkit.store.artifacts import REPORT_FILE

    given = {knob.key: getattr(args, _dest(knob.key)) for knob in _flag_knobs()
             if getattr(args, _dest(knob.key)) is not None}
    if args.eval_ppl:
        given.update({"evaluate.perplexity": True, "evaluate.image_qa": False, "evaluate.dense_agreement": False})
    given.update(parse_overrides(args.set))
    params = params_from_flat(given, label=lambda key: KNOB[key].flag if key in KNOB and KNOB[key].flag else f"-S {key}")
    p = params.prune
    out = args.out or default_out(params.model.name, params.method_label(), p.sparsity, p.structure)
    report = prune_to_folder(params, out, overwrite=args.overwrite, evaluate=args.eval_ppl, workdir=args.workdir,
                             progress=not args.no_progress)
    if not report:  # a torchrun rank other than 0: rank 0 reports
        return
    print(summary_table(report))
    if "metrics" in report:
        print(f"held-out perplexity {report['metrics']['heldout_perplexity']:.4f}")
    print(f"wrote {out / REPORT_FILE}")


def _compare(args: argparse.Namespace) -> None:
    from tampkit.reporting.compare import DEFAULT_METRICS, format_table, plot_scores, rows_from_folders

    if args.mlflow:
        try:
            from tasks.compare import rows_from_mlflow
        except ImportError as err:
            raise UsageError("--mlflow", f"cannot import the tracking layer ({err})",
                             "install the pipeline extra: pip install '.[pipeline]'") from None
        rows = rows_from_mlflow()
    else:
        if not args.folders:
            raise UsageError("compare", "name result folders or pass --mlflow", "artifacts, artifacts/sweep, ...")
        rows = rows_from_folders(args.folders)
    metrics = args.metrics.split(",") if args.metrics else list(DEFAULT_METRICS)
    print(format_table(rows, metrics))
    if args.plot is not None:
        for metric in metrics:
            if metric != "achieved_sparsity" and any(metric in r for r in rows):
                print(f"wrote {plot_scores(rows, metric, args.plot / f'{metric}_vs_sparsity.png')}")


def _organism(args: argparse.Namespace) -> None:
    """Print a shipped organism's card, re-measure it here (--check), or train a new one (--train)."""
    from tampkit.organism import NAMES
    from tampkit.organism.card import CARD_MD, card_table
    from tampkit.organism.lab import remeasure, train_organism
    from tampkit.organism.store import SHIPPED, organism_card, shipped_folder

    flag, name = next(((f, n) for f, n in (("--train", args.train), ("--check", args.check), ("--card", args.card))
                       if n is not None), (None, None))
    if flag is None:
        raise UsageError("organism", "name what to do", ["--card NAME", "--check NAME", "--train NAME"])
    if name not in NAMES:
        raise UsageError(flag, f"unknown organism '{name}'", list(NAMES))
    if args.train is not None:
        out = args.out or Path("out") / "organisms" / name
        folder = train_organism(name, out, overwrite=args.overwrite, progress=not args.no_progress,
                                checkpoints=args.checkpoints)
        print((folder / CARD_MD).read_text())
        print(f"wrote {folder}; to ship it, replace {SHIPPED / name} with it")
        return
    if args.card is not None:
        print((shipped_folder(name) / CARD_MD).read_text())
        return
    shipped, here = organism_card(name), remeasure(name, progress=not args.no_progress)
    print(f"shipped card of {name}:\n{card_table(shipped)}\n\nre-measured on this machine:\n{card_table(here)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="tamp", description="TAMP pruning of multimodal LLMs and its baselines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    prune = sub.add_parser("prune", help="prune a model's language decoder; write checkpoint, masks, report",
                           description="Runs the pipeline's stages over a temporary store (or --workdir) and gathers "
                                       "the checkpoint, masks, report and plots into --out. Every flag is a key of "
                                       "params.yaml; -S sets any other.")
    _add_knob_flags(prune)
    prune.add_argument("--out", type=Path, default=None,
                       help="output directory, written atomically (default: out/<model>-<method>-<sparsity>[-<N>of<M>])")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    prune.add_argument("--eval-ppl", action="store_true",
                       help="also run the evaluate stage with held-out perplexity only (OUT/metrics.json)")
    prune.add_argument("--workdir", type=Path, default=None,
                       help="keep the stage store here (reused by fingerprint on the next run: dense statistics, "
                            "calibration); default: a temporary store, removed")
    prune.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other params.yaml key, e.g. -S calibration.seed=1")
    prune.add_argument("--no-progress", action="store_true", help="no progress bars")

    stage = sub.add_parser("stage", help="run one pipeline stage over the artifact store (what dvc.yaml calls)")
    from tampkit.pipeline.table import STAGES

    stage.add_argument("name", help=", ".join(STAGES))
    _store_args(stage)
    stage.add_argument("--force", action="store_true", help="rerun the stage even if its record is up to date")
    pipeline = sub.add_parser("pipeline", help="run every pipeline stage in order (no DVC or Prefect needed)")
    _store_args(pipeline)
    pipeline.add_argument("--force", action="append", default=[], metavar="STAGE",
                          help="rerun STAGE even if its record is up to date (repeatable)")

    compare = sub.add_parser("compare", help="table (and plot) of method x sparsity x metric over finished runs")
    compare.add_argument("folders", nargs="*", type=Path, help="artifact stores, or folders holding them (e.g. artifacts/sweep)")
    compare.add_argument("--mlflow", action="store_true", help="read the MLflow runs instead (run from the repo root)")
    compare.add_argument("--metrics", default=None, help="comma-separated metric names (default: the offline suite)")
    compare.add_argument("--plot", type=Path, default=None, help="write score-vs-sparsity PNGs here (one per metric)")

    organism = sub.add_parser("organism", help="the scene-QA model organisms: print a shipped card, re-measure it, train anew")
    what = organism.add_mutually_exclusive_group()
    what.add_argument("--card", metavar="NAME", default=None, help="print the shipped card of organism NAME")
    what.add_argument("--check", metavar="NAME", default=None,
                      help="re-measure the shipped organism NAME's card on this machine beside the shipped one")
    what.add_argument("--train", metavar="NAME", default=None,
                      help="train organism NAME from its seed (~28 min for organism, ~6 min for organism-mini, on 2 cores) into --out")
    organism.add_argument("--out", type=Path, default=None, help="with --train: output folder (default out/organisms/NAME)")
    organism.add_argument("--overwrite", action="store_true", help="with --train: replace an existing --out")
    organism.add_argument("--checkpoints", type=Path, default=None,
                          help="with --train: save the weights every 200 steps under DIR/step-N (to watch a long run)")
    organism.add_argument("--no-progress", action="store_true", help="no progress bars")

    generate = sub.add_parser("generate", help="write dvc.yaml and params.yaml from the stage table and the config schema")
    generate.add_argument("--check", action="store_true", help="exit 1 when a file is out of date instead of writing it")

    summary = sub.add_parser("summary", help="what a finished run gives: sparsity, metrics beside the dense model's, "
                             "stage seconds, where the results are, the MLflow UI command")
    summary.add_argument("root", nargs="?", type=Path, default=Path("artifacts"), help="the artifact store (default artifacts)")

    ppl = sub.add_parser("ppl", help="held-out perplexity of a model (alias or folder), unpruned")
    ppl.add_argument("--model", required=True)
    ppl.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    from tampkit.core.errors import StageFailed
    from tampkit.reporting.console import install_cli_handler

    args = build_parser().parse_args(argv)
    install_cli_handler()
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: join its process group
            from tampkit.core.ranks import init_from_env

            init_from_env()
        if args.command == "prune":
            _prune(args)
        elif args.command in ("stage", "pipeline"):
            _run_stages(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "organism":
            _organism(args)
        elif args.command == "generate":
            from tampkit.pipeline.generate import main as generate_main

            return generate_main(["--check"] if args.check else [])
        elif args.command == "summary":
            from tampkit.pipeline.summary import summary_text

            print(summary_text(args.root))
        elif args.command == "ppl":
            from tampkit.evaluation import perplexity
            from tampkit.models import load_model

            print(f"{args.model}: held-out perplexity {perplexity(load_model(args.model), device=args.device):.4f}")
    except UsageError as err:
        print(f"tamp: error: {err}", file=sys.stderr)
        return 2
    except StageFailed as err:
        print(f"tamp: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
