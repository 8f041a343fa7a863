"""UnlearnOps core library: data, models, unlearning methods, metrics.

Pure library: imports no Prefect, DVC or Great Expectations, so it can be used
and tested on its own. Orchestration lives in ``tasks`` and ``flows``.
"""
