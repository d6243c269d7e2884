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
