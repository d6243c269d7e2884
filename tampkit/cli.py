"""The `tamp` command. Bad input: one line naming the field and what is allowed, exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tampkit.core.errors import UsageError


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


def parse_overrides(pairs: list[str]) -> dict[str, object]:
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
    from tampkit.pipeline.params import load_params
    from tampkit.pipeline.stages import run_pipeline, run_stage
    from tampkit.store.layout import Layout

    params = load_params(args.params, parse_overrides(args.set))
    layout = Layout.under(args.workdir)
    progress = not args.no_progress
    if args.command == "stage":
        _print_record(args.name, run_stage(args.name, params, layout, progress=progress, force=args.force))
    else:
        run_pipeline(params, layout, progress=progress, on_stage=_print_record, force=tuple(args.force))


def _compare(args: argparse.Namespace) -> None:
    import os

    from tampkit.reporting.compare import DEFAULT_METRICS, format_table, plot_scores, rows_from_folders

    if args.mlflow:
        sys.path.insert(0, os.getcwd())  # tasks/ is a top-level package of the repo
        try:
            from tasks.compare import rows_from_mlflow
        except ImportError as err:
            raise UsageError("--mlflow", f"cannot import the tracking layer ({err})",
                             "run from the repo root with the pipeline extra installed") from None
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
    from tampkit.organism.store import SHIPPED, organism_card, remeasure, shipped_folder, train_organism

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


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="tamp", description="TAMP pruning of multimodal LLMs and its baselines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    prune = sub.add_parser("prune", help="prune a model's language decoder; write checkpoint, masks, report")
    prune.add_argument("--model", required=True, help="alias (smollm2-llava-next, smollm2-135m, organism, organism-mini, tiny-*), local folder or hub id")
    prune.add_argument("--method", required=True, help="magnitude, wanda, sparsegpt, owl, das, amia, tamp")
    prune.add_argument("--sparsity", required=True, type=float, help="fraction of decoder Linear weights to zero, in [0, 1)")
    prune.add_argument("--out", type=Path, default=None,
                       help="output directory, written atomically (default: out/<model>-<method>-<sparsity>[-<N>of<M>])")
    prune.add_argument("--structure", default="unstructured", help="unstructured, 2:4 or 4:8 (N:M needs --sparsity 0.5)")
    prune.add_argument("--nsamples", type=int, default=128, help="calibration samples (default 128)")
    prune.add_argument("--seed", type=int, default=42, help="calibration sampling seed (default 42)")
    prune.add_argument("--calibration", default=None,
                       help="builtin, builtin-images, builtin-text, builtin-av, scenes, sharegpt4v[:PATH], avinstruct:PATH "
                            "or a JSONL folder (default: builtin; builtin-av for audio-video models)")
    prune.add_argument("--propagation", default="pruned", help="pruned (default) or dense: which outputs feed the next block")
    prune.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N: where each block runs")
    prune.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (for hub ids / folders)")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    prune.add_argument("--eval-ppl", action="store_true", help="add held-out perplexity of the pruned model to the report")
    prune.add_argument("--no-progress", action="store_true", help="no progress bars")
    prune.add_argument("--stats-cache", type=Path, default=None,
                       help="folder caching the dense statistics pass (das, tamp, owl), reused by fingerprint")
    prune.add_argument("--no-plots", action="store_true", help="do not write the PNG plots beside the report")
    tamp = prune.add_argument_group("TAMP / OWL constants (defaults: the paper's)")
    tamp.add_argument("--s-max-offset", type=float, default=0.1, help="DAS: no matrix sparser than target + this (0.1)")
    tamp.add_argument("--das-score", default="unweighted", help="DAS scores: unweighted D_k (official) or size (D_k * n_k)")
    tamp.add_argument("--intra", default="positive", help="intra-modality similarity: positive pairs only (official) or all")
    tamp.add_argument("--knn", type=int, default=3, help="AMIA: neighbours per token (3)")
    tamp.add_argument("--suppression", type=float, default=0.2, help="AMIA: suppression exp(-x d) (0.2)")
    tamp.add_argument("--stop", type=float, default=0.1, help="AMIA: stop when MMD^2 < x sqrt(1 - rho) (0.1)")
    tamp.add_argument("--sigma", type=float, default=1.0, help="AMIA: RBF kernel width (1.0)")
    tamp.add_argument("--owl-threshold", type=float, default=5.0, help="OWL: outlier = score > x * mean (5)")
    tamp.add_argument("--owl-lambda", type=float, default=0.08, help="OWL: block sparsities span 2 x lambda (0.08)")

    stage = sub.add_parser("stage", help="run one pipeline stage over the artifact store (what dvc.yaml calls)")
    stage.add_argument("name", help="calibrate, stats, allocate, masks, prune or evaluate")
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

    ppl = sub.add_parser("ppl", help="held-out perplexity of a model (alias or folder), unpruned")
    ppl.add_argument("--model", required=True)
    ppl.add_argument("--device", default="cpu")
    return parser


def default_out(model: str, method: str, sparsity: float, structure: str) -> Path:
    """out/<model>-<method>-<sparsity>: a hub id's slash and a path's folders do not nest it."""
    name = Path(model).name if ("/" in model and Path(model).expanduser().exists()) else model.replace("/", "--")
    suffix = "" if structure == "unstructured" else "-" + structure.replace(":", "of")
    return Path("out") / f"{name.replace(':', '--')}-{method}-{sparsity:g}{suffix}"


def main(argv: list[str] | None = None) -> int:
    from tampkit.core.errors import StageFailed
    from tampkit.reporting.console import install_cli_handler

    args = _parser().parse_args(argv)
    install_cli_handler()
    try:
        if args.command == "prune":
            from tampkit.pipeline.config import PruneConfig
            from tampkit.methods.params import MethodParams
            from tampkit.pipeline.prune_command import run_prune
            from tampkit.reporting.report import summary_table

            out = args.out or default_out(args.model, args.method, args.sparsity, args.structure)
            config = PruneConfig(model=args.model, method=args.method, sparsity=args.sparsity, out=out,
                                 structure=args.structure, nsamples=args.nsamples, seed=args.seed,
                                 calibration=args.calibration, propagation=args.propagation, device=args.device,
                                 dtype=args.dtype, overwrite=args.overwrite, eval_ppl=args.eval_ppl,
                                 stats_cache=args.stats_cache, plots=not args.no_plots,
                                 params=MethodParams(s_max_offset=args.s_max_offset, das_score=args.das_score,
                                                     intra=args.intra, knn=args.knn, suppression=args.suppression,
                                                     stop=args.stop, sigma=args.sigma, owl_threshold=args.owl_threshold,
                                                     owl_lambda=args.owl_lambda))
            report = run_prune(config, progress=not args.no_progress)
            print(summary_table(report))
            print(f"wrote {out}/tamp_report.json")
        elif args.command in ("stage", "pipeline"):
            _run_stages(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "organism":
            _organism(args)
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
