"""One error type for bad input, so every entry point can report it the same way."""


class InputError(ValueError):
    """Bad input: names the offending field and the reason.

    The CLI turns this into a one-line message and exit code 2; nothing is
    written before the check that raises it.
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
