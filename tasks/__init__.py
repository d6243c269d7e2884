"""Prefect tasks (one per pipeline stage) and MLflow tracking: the thin layer over tampkit.

Task results (stage records, small JSON) persist under .prefect-results/ in the working
directory unless PREFECT_RESULTS_LOCAL_STORAGE_PATH says otherwise, so the task cache holds
across processes and across `prefect deployment run`s. Import this package before Prefect.
"""

import os
from pathlib import Path

os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(Path(".prefect-results").resolve()))
# Offline machines: no usage telemetry from MLflow or the Prefect server.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary server a flow starts when no PREFECT_API_URL is set gets 20 s by default, which a
# 2-core machine busy with another run does not always meet: give it three minutes.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
