"""The organism as a cached Prefect task: trained once per machine, reused by every flow run.

The cache key is the organism's key (its spec and the source of the code that trains it); the
task's cache is refreshed when the machine's organism folder is gone, as for the stage tasks.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext

from tampkit.organism.model import SPECS
from tampkit.organism.store import cache_root, organism_folder, organism_key


def _key(_context: TaskRunContext, inputs: dict[str, Any]) -> str:
    return f"organism-{inputs['name']}-{organism_key(inputs['name'])}-{cache_root()}"


@task(name="organism", cache_policy=CacheKeyFnPolicy(cache_key_fn=_key), persist_result=True, result_serializer="json")
def _train(name: str) -> str:
    return str(organism_folder(name))


def ensure_organism(model_name: str) -> str | None:
    """Inside a flow: the organism's folder (training it on first use), None for other models."""
    if model_name not in SPECS:
        return None
    trained = (cache_root() / "organisms" / f"{model_name}-{organism_key(model_name)}" / "card.json").exists()
    return (_train if trained else _train.with_options(refresh_cache=True))(model_name)
