"""Serve the deployments `tamp/full` and `tamp-sweep/sweep` from this process (Ctrl-C stops).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve

Each deployment runs one flow run at a time (`concurrency_limit=1`): a second `prefect deployment
run` (or Run clicked twice) waits in the queue as AwaitingConcurrencySlot instead of racing the
first on the same artifact store (the store's run lock would also make it wait).
"""

from prefect import serve

from flows.full import full
from flows.sweep import sweep

if __name__ == "__main__":
    serve(full.to_deployment(name="full", concurrency_limit=1), sweep.to_deployment(name="sweep", concurrency_limit=1))
