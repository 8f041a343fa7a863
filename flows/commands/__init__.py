"""Sub-command groups of the ``unlearn`` CLI; each module exposes ``register(subparsers)``.

Modules import heavy dependencies (torch, Prefect, DVC) inside their handlers
so ``unlearn --help`` stays fast.
"""
