"""The base of gpf's expected errors: the CLI prints their message as one line, no traceback."""


class GPFError(Exception):
    """An error whose message names the input (file, line, id) and says what to do."""


class OptionError(GPFError, ValueError):
    """A parameter value gpf does not accept; ``param`` is its library name (the CLI words it as its option)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
