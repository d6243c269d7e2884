"""params.yaml: every knob of every pipeline stage, validated on load with one-line errors.

DVC reads the same file (`params:` of each stage lists only the keys that stage reads, see
`STAGE_KEYS`), the Prefect flow takes dotted overrides of it, and a stage's fingerprint hashes
exactly the keys it reads, so changing the sparsity never invalidates the dense statistics.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tampkit.core.errors import UsageError
from tampkit.core.masks import Structure, parse_structure
from tampkit.methods.params import MethodParams


@dataclass(frozen=True)
class ModelParams:
    name: str = "smollm2-llava-next"  # alias, local folder or hub id
    dtype: str = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class CalibrationParams:
    source: str = "builtin-images"
    nsamples: int = 32
    seed: int = 42


@dataclass(frozen=True)
class StatsParams:
    intra: str = "positive"  # intra-modality similarity over positive pairs (official) or all; AMIA too


@dataclass(frozen=True)
class PruneParams:
    method: str = "tamp"
    sparsity: float = 0.5
    structure: str = "unstructured"
    propagation: str = "pruned"


@dataclass(frozen=True)
class AllocationParams:
    s_max_offset: float = 0.1
    das_score: str = "unweighted"
    owl_threshold: float = 5.0
    owl_lambda: float = 0.08


@dataclass(frozen=True)
class AmiaSection:
    knn: int = 3
    suppression: float = 0.2
    stop: float = 0.1
    sigma: float = 1.0


@dataclass(frozen=True)
class EvaluateParams:
    perplexity: bool = True  # held-out prose
    ppl_window: int = 256
    image_qa: bool = True  # held-out image questions: answer log-likelihood, exact match
    qa_max_new_tokens: int = 8
    dense_agreement: bool = True  # KL and top-1 agreement with the dense model
    agreement_text_windows: int = 4
    scene_qa: bool = False  # generated scene questions (the organism's test split), accuracy per type
    limit: int = 0  # 0: every item; N: the first N of each suite and lmms-eval task
    lmms_tasks: list = field(default_factory=list)  # lmms-eval task names (needs the lmms extra)


SECTIONS: dict[str, type] = {
    "model": ModelParams, "calibration": CalibrationParams, "stats": StatsParams, "prune": PruneParams,
    "allocation": AllocationParams, "amia": AmiaSection, "evaluate": EvaluateParams,
}

#: The keys each stage reads: its fingerprint and its DVC `params:` (a section name means all of it).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "calibrate": ("model.name", "model.dtype", "calibration"),
    "stats": ("model.name", "model.dtype", "model.device", "stats"),
    "allocate": ("model.name", "model.dtype", "prune.method", "prune.sparsity", "prune.structure", "allocation"),
    "masks": ("model.name", "model.dtype", "model.device", "stats.intra", "prune", "amia"),
    "prune": ("model.name", "model.dtype"),
    "evaluate": ("model.device", "evaluate"),
}

#: Where the library's own field names (CLI flags) live in params.yaml, for error messages.
_FLAG_KEYS = {
    "--method": "prune.method", "--sparsity": "prune.sparsity", "--structure": "prune.structure",
    "--propagation": "prune.propagation", "--device": "model.device", "--dtype": "model.dtype",
    "--nsamples": "calibration.nsamples", "--calibration": "calibration.source",
    "--s-max-offset": "allocation.s_max_offset", "--das-score": "allocation.das_score",
    "--owl-threshold": "allocation.owl_threshold", "--owl-lambda": "allocation.owl_lambda",
    "--intra": "stats.intra", "--knn": "amia.knn", "--suppression": "amia.suppression", "--stop": "amia.stop",
    "--sigma": "amia.sigma",
}


@dataclass(frozen=True)
class Params:
    model: ModelParams = field(default_factory=ModelParams)
    calibration: CalibrationParams = field(default_factory=CalibrationParams)
    stats: StatsParams = field(default_factory=StatsParams)
    prune: PruneParams = field(default_factory=PruneParams)
    allocation: AllocationParams = field(default_factory=AllocationParams)
    amia: AmiaSection = field(default_factory=AmiaSection)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """{"prune.sparsity": 0.5, ...}: MLflow params, overrides, DVC keys."""
        return {f"{s}.{k}": v for s, values in self.to_dict().items() for k, v in values.items()}

    def method_params(self) -> MethodParams:
        a, m = self.allocation, self.amia
        return MethodParams(s_max_offset=a.s_max_offset, das_score=a.das_score, intra=self.stats.intra, knn=m.knn,
                            suppression=m.suppression, stop=m.stop, sigma=m.sigma, owl_threshold=a.owl_threshold,
                            owl_lambda=a.owl_lambda)

    def structure(self) -> Structure:
        return parse_structure(self.prune.structure, self.prune.sparsity)

    def stage_view(self, stage: str) -> dict[str, Any]:
        """The params a stage reads, flat and sorted: what its fingerprint hashes."""
        flat = self.flat()
        keys = STAGE_KEYS[stage]
        return {k: v for k, v in sorted(flat.items()) if k in keys or k.split(".")[0] in keys}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def validate(self) -> Params:
        """The library's own checks, reported under params.yaml key names."""
        from tampkit.pipeline.config import validate_settings

        try:
            p, m = self.prune, self.model
            validate_settings(p.method, p.sparsity, p.structure, p.propagation, m.device, m.dtype,
                              self.calibration.nsamples, self.method_params())
            e = self.evaluate
            if e.ppl_window < 2:
                raise UsageError("evaluate.ppl_window", f"must be at least 2, got {e.ppl_window}")
            for key in ("qa_max_new_tokens", "agreement_text_windows"):
                if getattr(e, key) < 1:
                    raise UsageError(f"evaluate.{key}", f"must be at least 1, got {getattr(e, key)}")
            if e.limit < 0:
                raise UsageError("evaluate.limit", f"must be 0 (everything) or more, got {e.limit}")
            if not all(isinstance(t, str) and t for t in e.lmms_tasks):
                raise UsageError("evaluate.lmms_tasks", f"expected a list of task names, got {e.lmms_tasks!r}")
        except UsageError as err:
            key = _FLAG_KEYS.get(err.field, err.field)
            raise UsageError(f"params: {key}", str(err).split(": ", 1)[1]) from None
        return self


def _kind(spec: Any) -> type:
    return type(spec.default_factory() if spec.default is MISSING else spec.default)


def _typed(key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"params: {key}", f"expected {kind.__name__}, got {value!r}")
    return value


def params_from_dict(raw: dict[str, Any] | None) -> Params:
    """Build and validate; missing keys take the defaults, unknown ones are errors."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise UsageError("params", "expected a mapping of sections", SECTIONS)
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise UsageError(f"params: {name}", "unknown section", SECTIONS)
        cls = SECTIONS[name]
        known = {f.name: f for f in fields(cls)}
        values = values or {}
        if not isinstance(values, dict):
            raise UsageError(f"params: {name}", f"expected a mapping, got {values!r}", known)
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise UsageError(f"params: {name}.{key}", "unknown key", known)
            kwargs[key] = _typed(f"{name}.{key}", value, _kind(known[key]))
        sections[name] = cls(**kwargs)
    return Params(**sections).validate()


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `raw` with dotted keys replaced ({"prune.sparsity": 0.6}), as `dvc exp run -S` does."""
    result = copy.deepcopy(raw or {})
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or key not in {f.name for f in fields(SECTIONS[section])}:
            raise UsageError(f"override {dotted}", "unknown key", sorted(Params().flat()))
        result.setdefault(section, {})[key] = value
    return result


def load_params(path: Path | str = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise UsageError("--params", f"{path} does not exist", "a params.yaml file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError("--params", f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    return params_from_dict(apply_overrides(raw or {}, overrides))
