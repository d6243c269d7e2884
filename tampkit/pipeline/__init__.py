"""The pipeline: config schema, stage table, stage functions and how they run."""
