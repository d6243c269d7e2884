"""Serve the deployments `tamp/full` and `tamp-sweep/sweep` from this process (Ctrl-C stops).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve
"""

from prefect import serve

from flows.full import full
from flows.sweep import sweep

if __name__ == "__main__":
    serve(full.to_deployment(name="full"), sweep.to_deployment(name="sweep"))
