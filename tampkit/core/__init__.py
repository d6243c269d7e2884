"""Shared types and the pure math of TAMP and its baselines; imports only torch."""
