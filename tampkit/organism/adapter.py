"""The organism's `--model` aliases, through the same plug-in registry as any other package's
adapter (entry point group `tampkit.adapters`, see `tampkit.models.plugins`): `organism` and
`organism-mini` load the shipped folders, and their fingerprint identity is the shipped weights'
bytes. The loaded model is a LLaVA-NeXT, served by the built-in LLaVA-NeXT adapter; this one only
claims the names (it serves no model class)."""

from __future__ import annotations

from tampkit.models.adapters import Adapter, ModelBundle
from tampkit.organism import NAMES


class OrganismAdapter(Adapter):
    family = "organism"
    class_names: tuple[str, ...] = ()
    class_suffixes: tuple[str, ...] = ()
    aliases = NAMES

    def claims(self, spec: str) -> bool:
        return spec in NAMES

    def load(self, spec: str, dtype: str = "auto") -> ModelBundle:
        from tampkit.organism.store import load_organism

        return load_organism(spec)

    def identity(self, spec: str) -> str:
        from tampkit.organism.store import weights_identity

        return weights_identity(spec)
