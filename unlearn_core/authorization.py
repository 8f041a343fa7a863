"""Who may delete what: roles, the approval rule and the quotas, as pure decisions.

A request's submitter has one role. ``subject`` (a privacy portal acting for data
subjects) may delete samples and subjects; ``governance`` may also delete a whole
class, which removes a capability from a product and therefore always waits for a
human approval. Quotas bound what any one submitter can remove without a human
looking: a flood of sample deletions degrades a model as surely as a class deletion.
Over-quota requests are held for approval, never dropped.

The service (flows/submit.py) gathers the numbers; this module only decides.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import Params, method_config
from .errors import InputError

ROLES = ("subject", "governance")
ROLE_KINDS = {"subject": frozenset({"samples", "subject"}), "governance": frozenset({"samples", "subject", "class"})}
APPROVAL_KINDS = frozenset({"class"})  # always need a human approval, whoever asks


class AuthorizationParams(BaseModel):
    """The ``authorization`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid")
    signature_window_s: float = Field(300.0, gt=0)  # |now - signed_at| accepted; nonces are kept longer
    max_pending_per_submitter: int = Field(50, ge=1)  # requests not yet finished, per submitter
    daily_share_without_approval: float = Field(0.01, gt=0, le=1)  # of the training rows, per submitter per day
    approval_wait_hours: float = Field(72.0, gt=0)  # a paused approval run waits this long at most


def authorization_params(params: Params) -> AuthorizationParams:
    """The validated ``authorization`` section of params.yaml (defaults when absent)."""
    try:
        return AuthorizationParams.model_validate(method_config(params, "authorization"))
    except ValidationError as exc:
        raise InputError.from_validation(exc, "params.yaml: authorization.") from None


@dataclass(frozen=True)
class Usage:
    """What a submitter already has in the queue."""

    pending: int  # requests pending, leased or awaiting approval
    rows_last_day: int  # training rows its requests of the last 24 h delete (rejected ones excluded)


def authorize(submitter: str, role: str, kind: str, forget_rows: int, train_rows: int, usage: Usage,
              params: AuthorizationParams) -> str | None:
    """Raise InputError if ``role`` may not ask for ``kind``; else the reason to hold it for approval, or None."""
    if role not in ROLE_KINDS:
        raise InputError("submitter", f"{submitter!r} has unknown role {role!r}; known: {', '.join(ROLES)}")
    if kind not in ROLE_KINDS[role]:
        raise InputError("kind", f"submitter {submitter!r} has role {role!r}, which may not request {kind} "
                                 f"deletions (they need a governance submitter and a human approval)")
    share = forget_rows / max(train_rows, 1)
    if kind in APPROVAL_KINDS:
        return (f"{kind} deletion: removes {forget_rows} of {train_rows} training rows ({share:.1%}) and a "
                "capability of the model; needs a human approval")
    if usage.pending >= params.max_pending_per_submitter:
        return (f"quota: submitter {submitter!r} already has {usage.pending} unfinished requests "
                f"(limit {params.max_pending_per_submitter} without approval)")
    day_share = (usage.rows_last_day + forget_rows) / max(train_rows, 1)
    if day_share > params.daily_share_without_approval:
        return (f"quota: submitter {submitter!r} would delete {usage.rows_last_day + forget_rows} training rows "
                f"in 24 h ({day_share:.2%} of {train_rows}; limit {params.daily_share_without_approval:.2%} "
                "without approval)")
    return None
