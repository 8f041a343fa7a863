"""Prefect flows, deployments and the ``unlearn`` command line."""
