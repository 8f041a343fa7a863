"""Prefect flows, the warm worker, submit and the ``unlearn`` CLI."""
# GTO configures logging with dictConfig when first imported, which closes every logging handler that
# exists then: imported in the middle of a flow run, it closes Prefect's API log handler and can deadlock
# with that handler's flush thread. Importing it before anything starts Prefect avoids both.
import gto.api  # noqa: F401
