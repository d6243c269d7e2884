"""Run lmms-eval tasks in process on a bundle (what the evaluate stage does for `evaluate.lmms_tasks`).

Each task runs on its own, so one whose data is unreachable offline is one error line while the
others are still scored. Metric names become `lmms.<task>.<metric>` (lmms-eval's `metric,filter`
keys carry commas, which MLflow refuses; the `none` filter is dropped, stderr entries are skipped).
"""

from __future__ import annotations

import tempfile
from typing import Any

from tampkit.models.adapters import ModelBundle


def metric_key(task: str, key: str) -> str | None:
    """`exact_match,none` -> `lmms.<task>.exact_match`; None for stderr and aliases."""
    metric, _, filter_name = key.partition(",")
    if metric == "alias" or "_stderr" in metric:
        return None
    name = metric if filter_name in ("", "none") else f"{metric}_{filter_name}"
    return f"lmms.{task}.{name}"


def run_lmms_tasks(bundle: ModelBundle, tasks: list[str], limit: int = 0,
                   device: str = "cpu") -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
    """(metrics, per-task sample logs, per-task error lines)."""
    try:
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(f"lmms-eval is not installed ({err}); see the README's evaluation section") from None
    from tampkit.lmms.model import TampkitLMM
    from tampkit.lmms.tasks import write_local_tasks

    model = TampkitLMM(bundle=bundle, device=device)
    metrics: dict[str, float] = {}
    samples: dict[str, Any] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tampkit-lmms-tasks-") as folder:
        manager = TaskManager(include_path=str(write_local_tasks(folder)))
        known = set(manager.all_tasks)
        for task in tasks:
            if task not in known:
                errors[task] = f"unknown lmms-eval task '{task}'"
                continue
            try:
                out = simple_evaluate(model=model, tasks=[task], limit=limit or None, task_manager=manager,
                                      batch_size=1, log_samples=True, verbosity="WARNING")
            except Exception as err:  # noqa: BLE001 - e.g. a hub dataset unreachable offline
                errors[task] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
                continue
            for name, values in (out or {}).get("results", {}).items():
                for key, value in values.items():
                    metric = metric_key(name, key)
                    if metric is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                        metrics[metric] = float(value)
            samples[task] = [{k: v for k, v in s.items() if k in ("doc_id", "target", "filtered_resps")}
                             for s in (out or {}).get("samples", {}).get(task, [])]
    return metrics, samples, errors
