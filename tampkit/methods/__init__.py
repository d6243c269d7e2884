"""Scorers (magnitude, Wanda, SparseGPT, AMIA-Wanda) and the method presets (`registry`)."""
