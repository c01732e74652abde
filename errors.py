"""The base of gpf's expected errors: the CLI prints their message as one line, no traceback."""


class GPFError(Exception):
    """An error whose message names the input (file, line, id) and says what to do."""
