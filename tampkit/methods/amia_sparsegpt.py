"""AMIA-SparseGPT: SparseGPT whose Hessian accumulates only the tokens AMIA selects.

H = 2/n sum x x^T over the selected rows of every sample, each selected token weighing one, as in
AMIA-Wanda's statistic (the mean over all selected tokens). The constant in front does not matter:
the OBS update and its mask are invariant to scaling H (the damping is relative to mean(diag H)),
so n is the sample count, as in SparseGPT. With AMIA selecting every token the Hessian, and so the
masks and the updated weights, are SparseGPT's bit for bit.
"""

from __future__ import annotations

from tampkit.methods.amia_selection import AmiaSelection
from tampkit.methods.sparsegpt import SparseGPT


class AmiaSparseGPT(AmiaSelection, SparseGPT):
    name = "amia-sparsegpt"
