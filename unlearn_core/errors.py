"""One error type for bad input, so every entry point can report it the same way."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class InputError(ValueError):
    """Bad input: names the offending field and the reason.

    The CLI turns this into a one-line message and exit code 2; nothing is
    written before the check that raises it.
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    @classmethod
    def from_validation(cls, exc: "ValidationError", prefix: str = "") -> "InputError":
        """The first error of a pydantic ``ValidationError`` as ``<prefix><field path>: <reason>``.

        The field path reads like the input (``forget.sample_ids[3]``); the reason
        drops pydantic's ``Value error,`` prefix and names unknown/missing fields plainly.
        """
        first = exc.errors()[0]
        path = ""
        for part in first["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        if first["type"] == "extra_forbidden":
            reason = "unknown field"
        elif first["type"] == "missing":
            reason = "required field is missing"
        else:
            reason = first["msg"].removeprefix("Value error, ")
        return cls(prefix + path if path else (prefix.rstrip(".: ") or "payload"), reason)
