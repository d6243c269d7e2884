"""The pipeline stages, one module each: `run(ctx) -> dict` over the artifact store.

Each module's imports are its code: a stage's fingerprint and its DVC `deps` are the files its
module reaches (see tampkit.pipeline.imports), so keep a stage's imports to what it runs.
"""
