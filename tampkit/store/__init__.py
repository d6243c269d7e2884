"""The artifact store: atomic writes, per-block files, stage records and fingerprints, run locks."""
