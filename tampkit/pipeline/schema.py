"""Every knob of the pipeline, declared once: key, type, default, allowed values, help, CLI flag.

Everything else derives from this table: the `Params` sections and their validation (params.yaml
and `-S` overrides), the `tamp prune` flags and their one-line errors, the typed Prefect flow
parameters (a pydantic model, so the Prefect UI draws a form), the comments of params.yaml and the
params each DVC stage lists. Defaults are the paper's (TAMP, Wanda, OWL); `DEMO` below is the one
place where the shipped params.yaml departs from them, for a demo that fits 2 CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tampkit.core.amia_params import AMIA_SCOPES, AmiaParams
from tampkit.core.errors import UsageError
from tampkit.core.types import parse_structure
from tampkit.methods.presets import ALLOCATIONS, FROM_METHOD, PRESETS, SCORERS

#: check(value, label) raises UsageError(label, ...) when the value is not allowed.
Check = Callable[[Any, str], None]


@dataclass(frozen=True)
class Knob:
    """One params.yaml key: its type, default, what it may take, what it means, its `tamp prune` flag."""

    key: str  # section.name, as in params.yaml
    kind: type
    default: Any
    help: str
    allowed: tuple[str, ...] | None = None  # the values a str knob may take (None: free text)
    check: Check | None = None
    flag: str | None = None  # the `tamp prune` flag (None: params.yaml / -S only)

    @property
    def section(self) -> str:
        return self.key.split(".")[0]

    @property
    def name(self) -> str:
        return self.key.split(".")[1]

    def validate(self, value: Any, label: str) -> Any:
        """The value with its declared type (an int where a float is declared becomes a float)."""
        value = typed(value, self.kind, label)
        if self.allowed is not None and value not in self.allowed:
            raise UsageError(label, f"unknown value '{value}'", self.allowed)
        if self.check is not None:
            self.check(value, label)
        return value


def typed(value: Any, kind: type, label: str) -> Any:
    """`value` as `kind` (an int where a float is declared becomes a float); a bool is not a number."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise UsageError(label, f"expected {kind.__name__}, got {value!r}")
    return value


def at_least(low: float) -> Check:
    """A check: a finite number >= low."""
    def check(value: Any, label: str) -> None:
        if not (math.isfinite(value) and value >= low):
            raise UsageError(label, f"must be a finite number >= {low:g}, got {value}")
    return check


def above(low: float) -> Check:
    """A check: a finite number > low."""
    def check(value: Any, label: str) -> None:
        if not (math.isfinite(value) and value > low):
            raise UsageError(label, f"must be a finite number > {low:g}, got {value}")
    return check


def within(low: float, high: float) -> Check:
    """A check: a finite number in [low, high]."""
    def check(value: Any, label: str) -> None:
        if not (math.isfinite(value) and low <= value <= high):
            raise UsageError(label, f"must be in [{low:g}, {high:g}], got {value}")
    return check


def _sparsity(value: float, label: str) -> None:
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise UsageError(label, f"must be in [0, 1), got {value}", "0 <= sparsity < 1")


def _device(value: str, label: str) -> None:
    if value not in DEVICES and not value.startswith("cuda:"):
        raise UsageError(label, f"unknown device '{value}'", DEVICES + ("cuda:N",))


def _task_names(value: list, label: str) -> None:
    if not all(isinstance(t, str) and t for t in value):
        raise UsageError(label, f"expected a list of task names, got {value!r}")


DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: Where a model's weights wait while a stage works (tampkit/models/offload.py).
OFFLOADS = ("none", "disk")
PROPAGATIONS = ("pruned", "dense")
#: How the pruned checkpoint is written (tampkit/models/compressed.py): zeros at full width, or the
#: pruned decoder Linears as compressed-tensors' sparse bitmask (1 bit per weight + the kept values).
SAVE_FORMATS = ("dense", "compressed")
DAS_SCORES = ("unweighted", "size")
INTRA_MODES = ("positive", "all")
#: What `calibration.source` takes; "auto" is the model family's default (builtin, or builtin-av
#: for audio-video models, so that one command exercises every modality they read).
CALIBRATION_HELP = ("auto, builtin, builtin-images, builtin-text, builtin-av, scenes, sharegpt4v[:PATH], "
                    "avinstruct:PATH or a JSONL folder")

#: AMIA's constants are declared with its math (core.amia); the knobs take them from there.
_AMIA = AmiaParams()

KNOBS: tuple[Knob, ...] = (
    Knob("model.name", str, "smollm2-llava-next", "alias (smollm2-llava-next, smollm2-135m, organism, organism-mini, "
         "tiny-*), local folder or hub id", flag="--model"),
    Knob("model.dtype", str, "auto", "weights dtype for folders and hub ids", allowed=DTYPES, flag="--dtype"),
    Knob("model.device", str, "auto", "where each block runs: auto, cpu, cuda, cuda:N", check=_device, flag="--device"),
    Knob("model.offload", str, "none", "none: weights in memory; disk: a local folder's weights stay in its "
         "safetensors files, each block read only while it runs (models larger than RAM; same results)",
         allowed=OFFLOADS, flag="--offload"),
    Knob("calibration.source", str, "auto", f"calibration data: {CALIBRATION_HELP}", flag="--calibration"),
    Knob("calibration.nsamples", int, 128, "calibration samples", check=at_least(1), flag="--nsamples"),
    Knob("calibration.seed", int, 42, "calibration sampling seed", flag="--seed"),
    Knob("stats.intra", str, "positive", "intra-modality similarity over positive pairs (official) or all pairs; "
         "AMIA too", allowed=INTRA_MODES, flag="--intra"),
    Knob("prune.method", str, "tamp", "pruning method: a preset scorer with an allocation (--scorer and --allocation "
         "replace either part)", allowed=tuple(PRESETS),
         flag="--method"),
    Knob("prune.scorer", str, FROM_METHOD, f"how weights are ranked; '{FROM_METHOD}': the method's",
         allowed=(FROM_METHOD, *SCORERS), flag="--scorer"),
    Knob("prune.allocation", str, FROM_METHOD, f"how many weights each matrix loses; '{FROM_METHOD}': the method's "
         "(N:M is uniform per matrix whatever this says)", allowed=(FROM_METHOD, *ALLOCATIONS), flag="--allocation"),
    Knob("prune.sparsity", float, 0.5, "fraction of decoder Linear weights to zero, in [0, 1)", check=_sparsity,
         flag="--sparsity"),
    Knob("prune.structure", str, "unstructured", "unstructured, 2:4, 4:8 (N:M needs sparsity 0.5)",
         flag="--structure"),
    Knob("prune.propagation", str, "pruned", "which outputs feed the next block", allowed=PROPAGATIONS,
         flag="--propagation"),
    Knob("prune.save_format", str, "dense", "pruned checkpoint: dense (zeros stored; every loader reads it) or "
         "compressed (pruned decoder Linears as compressed-tensors' sparse-bitmask, sparse-24-bitmask for 2:4; "
         "smaller on disk; tampkit's loaders decompress it, see docs/deployment.md)", allowed=SAVE_FORMATS,
         flag="--save-format"),
    Knob("allocation.s_max_offset", float, 0.1, "DAS, ECoFLaP: no matrix (ECoFLaP: block) sparser than target + offset", check=within(0, 1),
         flag="--s-max-offset"),
    Knob("allocation.das_score", str, "unweighted", "DAS scores: unweighted D_k (official) or size (D_k * n_k)",
         allowed=DAS_SCORES, flag="--das-score"),
    Knob("allocation.owl_threshold", float, 5.0, "OWL: outlier = score > threshold * mean", check=above(0),
         flag="--owl-threshold"),
    Knob("allocation.owl_lambda", float, 0.08, "OWL: block sparsities span 2 * lambda", check=at_least(0),
         flag="--owl-lambda"),
    Knob("allocation.zo_eps", float, 1e-3, "ECoFLaP: noise scale eps of the zeroth-order block scores",
         check=above(0), flag="--zo-eps"),
    Knob("allocation.zo_seed", int, 42, "ECoFLaP: seed of the Gaussian noise z", flag="--zo-seed"),
    Knob("amia.knn", int, _AMIA.knn, "AMIA: neighbours per token", check=at_least(0), flag="--knn"),
    Knob("amia.suppression", float, _AMIA.suppression, "AMIA: exp(-suppression * density)", check=at_least(0), flag="--suppression"),
    Knob("amia.stop", float, _AMIA.stop, "AMIA: stop when MMD^2 < stop * sqrt(1 - rho)", check=at_least(0), flag="--stop"),
    Knob("amia.sigma", float, _AMIA.sigma, "AMIA: RBF kernel width", check=above(0), flag="--sigma"),
    Knob("amia.scope", str, _AMIA.scope, "AMIA: select among all tokens (the spec) or keep every text token and "
         "select among image/video/audio tokens only (nontext)", allowed=AMIA_SCOPES, flag="--amia-scope"),
    Knob("report.plots", bool, True, "write the PNG plots beside the report", flag="--no-plots"),
    Knob("evaluate.perplexity", bool, True, "held-out perplexity of the pruned checkpoint"),
    Knob("evaluate.ppl_window", int, 256, "tokens per perplexity window", check=at_least(2)),
    Knob("evaluate.image_qa", bool, True, "held-out image questions: answer log-likelihood and exact match"),
    Knob("evaluate.qa_max_new_tokens", int, 8, "greedy answer length", check=at_least(1)),
    Knob("evaluate.dense_agreement", bool, True, "KL(dense || pruned) and top-1 agreement of next-token "
         "distributions"),
    Knob("evaluate.agreement_text_windows", int, 4, "held-out prose windows added to the QA conversations for "
         "agreement", check=at_least(1)),
    Knob("evaluate.scene_qa", bool, False, "generated scene questions (organism test split): accuracy per type; "
         "agreement then uses them"),
    Knob("evaluate.limit", int, 0, "0: every item; N: the first N of each suite (a quick look)", check=at_least(0)),
    Knob("evaluate.lmms_tasks", list, [], "lmms-eval tasks (pip install '.[lmms]'), e.g. [tamp_image_qa] offline, "
         "[gqa, mme] with the hub", check=_task_names),
)
KNOB = {k.key: k for k in KNOBS}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(k.section for k in KNOBS))

#: The shipped params.yaml: the demo's departures from the defaults (2 CPU cores, minutes not hours).
DEMO: dict[str, Any] = {"calibration.source": "builtin-images", "calibration.nsamples": 32}


def section_knobs(section: str) -> list[Knob]:
    """The knobs of one params.yaml section, in declaration order."""
    return [k for k in KNOBS if k.section == section]


def check_together(values: dict[str, Any], label: Callable[[str], str]) -> None:
    """Checks that read two knobs: an N:M structure fixes the sparsity."""
    try:
        parse_structure(values["prune.structure"], values["prune.sparsity"])
    except UsageError as err:  # it names the flag it blames: --structure or --sparsity
        key = "prune.sparsity" if err.field == "--sparsity" else "prune.structure"
        raise UsageError(label(key), str(err).split(": ", 1)[1]) from None
