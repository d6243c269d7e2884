"""What a person reads: the prune report, plots, `tamp compare` tables."""
