"""The stage table: each pipeline stage declared once.

calibrate -> stats, sensitivity -> allocate -> masks -> prune -> evaluate, and reference (the dense
model on the evaluation set) -> evaluate. From this table follow the store's
folders (`Layout.folder`), each stage's fingerprint (the params it reads, its upstream records,
the code its module reaches through imports), the Prefect tasks, `tamp stage`/`tamp pipeline`
and the generated dvc.yaml (its `deps`, `params` and `outs`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Out:
    """One DVC output of a stage, relative to the store's root."""

    path: str
    persist: bool = False  # DVC keeps it when the stage reruns (resumable per-block files)
    cache: bool = True  # False: small files git shows, DVC does not cache
    metric: bool = False


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: what it runs, reads and writes (see the module docstring)."""

    name: str
    #: The module whose `run(ctx) -> dict` is the stage; its import closure is the stage's code.
    module: str
    #: Stages whose records this one reads (its fingerprint includes theirs).
    upstream: tuple[str, ...]
    #: params.yaml keys it reads, or whole sections: its fingerprint and its DVC `params:`.
    reads: tuple[str, ...]
    #: The Layout folder holding its record.
    folder: str
    #: Writes one file per block into its folder and resumes from them (instead of a whole folder).
    resumable: bool
    outs: tuple[Out, ...]
    #: What dvc.yaml says above the stage.
    note: str = ""
    #: Times a Prefect task retries it (evaluation can hit a transient failure).
    retries: int = 0
    #: A sweep computes it once for all its points (under the sweep's shared root).
    shared: bool = False
    #: A `Params` method saying whether the result needs this stage (None: always). When it says no,
    #: downstream stages neither read its record nor hash its fingerprint, `tamp prune` skips it, and
    #: the other drivers (DVC, Prefect, `tamp pipeline`) get a `skipped` record in a moment instead of
    #: its work. The method reads only `WHEN_READS`, which DVC lists among the stage's params so that
    #: `-S prune.method=tamp` reruns it; its fingerprint does not hash them, so a sweep shares it.
    when: str | None = None


#: The params a stage's `when` reads (see `Params.needs_dense_stats`).
WHEN_READS: tuple[str, ...] = ("prune.method", "prune.allocation", "prune.structure")

#: The `prune` knobs the masks depend on: every one but `prune.save_format`, which only the prune stage
#: reads (a compressed save of the same masks reuses them).
MASK_KNOBS: tuple[str, ...] = ("prune.method", "prune.scorer", "prune.allocation", "prune.sparsity",
                               "prune.structure", "prune.propagation")

STAGE_TABLE: tuple[Stage, ...] = (
    Stage("calibrate", "tampkit.pipeline.stages.calibrate", (), ("model.name", "model.dtype", "calibration"),
          "calibration", False, (Out("calibration"),), shared=True),
    Stage("stats", "tampkit.pipeline.stages.stats", ("calibrate",), ("model.name", "model.dtype", "model.device", "stats"),
          "stats", True, (Out("stats", persist=True),), shared=True,
          when="needs_dense_stats"),
    Stage("sensitivity", "tampkit.pipeline.stages.sensitivity", ("calibrate",),
          ("model.name", "model.dtype", "model.device", "allocation.zo_eps", "allocation.zo_seed"),
          "sensitivity", True, (Out("sensitivity", persist=True),), shared=True, when="needs_block_sensitivity",
          note="ECoFLaP's zeroth-order block scores (only for --allocation ecoflap; otherwise a 'skipped' record)"),
    Stage("allocate", "tampkit.pipeline.stages.allocate", ("calibrate", "stats", "sensitivity"),
          ("model.name", "model.dtype", "prune.method", "prune.allocation", "prune.sparsity", "prune.structure",
           "allocation"),
          "allocation", False,
          (Out("allocation/allocation.json"), Out("allocation/stage.json"),
           Out("allocation/allocation.csv", cache=False), Out("allocation/allocation_by_type.csv", cache=False))),
    Stage("masks", "tampkit.pipeline.stages.masks", ("calibrate", "allocate"),
          ("model.name", "model.dtype", "model.device", "stats.intra", *MASK_KNOBS, "amia"),
          "masks", True, (Out("masks", persist=True),)),
    Stage("prune", "tampkit.pipeline.stages.prune", ("calibrate", "allocate", "masks"),
          ("model.name", "model.dtype", "prune.save_format", "report"),
          "pruned", False, (Out("pruned"), Out("reports", cache=False)),
          note="reports: the report, layers.csv and the PNG plots (which ones depends on the method)"),
    Stage("reference", "tampkit.pipeline.stages.reference", (), ("model.name", "model.dtype", "model.device", "evaluate"),
          "reference", False, (Out("reference"),), shared=True,
          note="the dense model on the evaluation set (its metrics, and its states for dense agreement): once per model"),
    Stage("evaluate", "tampkit.pipeline.stages.evaluate", ("prune", "reference"), ("model.device", "evaluate"), "metrics",
          False,
          (Out("metrics/stage.json", cache=False), Out("metrics/samples.json", cache=False),
           Out("metrics/metrics.json", cache=False, metric=True)), retries=2),
)
STAGE = {s.name: s for s in STAGE_TABLE}
STAGES: tuple[str, ...] = tuple(STAGE)
UPSTREAM: dict[str, tuple[str, ...]] = {s.name: s.upstream for s in STAGE_TABLE}
RESUMABLE: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.resumable)
SHARED_STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.shared)
#: The stages that exist only to evaluate (`tamp prune` without evaluation skips them).
EVALUATION_STAGES: tuple[str, ...] = ("reference", "evaluate")


def ancestors(stage: str) -> list[str]:
    """Every stage `stage` depends on, directly or not, in pipeline order."""
    found: set[str] = set()
    todo = list(UPSTREAM[stage])
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(UPSTREAM[name])
    return [s for s in STAGES if s in found]
