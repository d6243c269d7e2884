"""Prefect flows: `tamp` (deployment `full`) runs the six stages, `tamp-sweep` runs methods x
sparsities over one shared calibration and dense-statistics pass. They only wire tasks."""

import tasks  # noqa: F401 - sets the results folder before Prefect reads its settings
