"""Running ``gpf`` in-process the way a user meets it: one line on error, never a traceback."""
from __future__ import annotations

from click.testing import CliRunner

from gpf.cli.main import cli


def invoke(args, **kw):
    """Run the CLI in this process; an exception escaping click would be a traceback for the user."""
    result = CliRunner().invoke(cli, [str(a) for a in args], **kw)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}"
    assert "Traceback" not in result.output
    return result


def refused(args, *words: str) -> str:
    """Run a command that must fail with one line holding ``words``; returns that line."""
    result = invoke(args)
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message, (word, message)
    return message
