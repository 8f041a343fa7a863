"""Prefect tasks: thin wrappers over unlearn_core (plus GX validation and DVC versioning)."""
