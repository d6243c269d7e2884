"""The `tamp` command. Bad input: one line naming the field and what is allowed, exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tampkit.errors import UsageError


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; we print one line
        print(f"tamp: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="tamp", description="TAMP pruning of multimodal LLMs and its baselines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    prune = sub.add_parser("prune", help="prune a model's language decoder; write checkpoint, masks, report")
    prune.add_argument("--model", required=True, help="alias (smollm2-llava-next, smollm2-135m, tiny-*), local folder or hub id")
    prune.add_argument("--method", required=True, help="magnitude, wanda, sparsegpt")
    prune.add_argument("--sparsity", required=True, type=float, help="fraction of decoder Linear weights to zero, in [0, 1)")
    prune.add_argument("--out", required=True, type=Path, help="output directory (written atomically)")
    prune.add_argument("--structure", default="unstructured", help="unstructured, 2:4 or 4:8 (N:M needs --sparsity 0.5)")
    prune.add_argument("--nsamples", type=int, default=128, help="calibration samples (default 128)")
    prune.add_argument("--seed", type=int, default=42, help="calibration sampling seed (default 42)")
    prune.add_argument("--calibration", default="builtin", help="builtin, builtin-images, builtin-text, sharegpt4v[:PATH] or a JSONL folder")
    prune.add_argument("--propagation", default="pruned", help="pruned (default) or dense: which outputs feed the next block")
    prune.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N: where each block runs")
    prune.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (for hub ids / folders)")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    prune.add_argument("--eval-ppl", action="store_true", help="add held-out perplexity of the pruned model to the report")
    prune.add_argument("--no-progress", action="store_true", help="no progress bars")

    ppl = sub.add_parser("ppl", help="held-out perplexity of a model (alias or folder), unpruned")
    ppl.add_argument("--model", required=True)
    ppl.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prune":
            from tampkit.config import PruneConfig
            from tampkit.prune import run_prune
            from tampkit.report import summary_table

            config = PruneConfig(model=args.model, method=args.method, sparsity=args.sparsity, out=args.out,
                                 structure=args.structure, nsamples=args.nsamples, seed=args.seed,
                                 calibration=args.calibration, propagation=args.propagation, device=args.device,
                                 dtype=args.dtype, overwrite=args.overwrite, eval_ppl=args.eval_ppl)
            report = run_prune(config, progress=not args.no_progress)
            print(summary_table(report))
            print(f"wrote {args.out}/tamp_report.json")
        elif args.command == "ppl":
            from tampkit.evaluation import perplexity
            from tampkit.models import load_model

            print(f"{args.model}: held-out perplexity {perplexity(load_model(args.model), device=args.device):.4f}")
    except UsageError as err:
        print(f"tamp: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
