"""How every command runs: plain INFO logging, and a user error as one line ``error: ...`` with status 2.

A user error is a missing file, a bad value or an unreadable file (FileNotFoundError, ValueError and
its subclasses such as ``ldm.weights.io.WeightsError``, PIL's UnidentifiedImageError). With
``LDM_FULL_ERROR=1`` in the environment it is raised with its traceback instead. Other exceptions
are bugs and always show their traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from PIL import UnidentifiedImageError

log = logging.getLogger(__name__)

USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError, UnidentifiedImageError)
"""The exceptions that report a problem with a command's input, not with the code."""

USER_ERROR_EXIT_CODE = 2
"""The exit status of a command refused for its input (argparse's, for a bad flag)."""

FULL_ERROR_VARIABLES = ("LDM_FULL_ERROR",)
"""Environment variables that, set to 1, show a user error's traceback."""


def command_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """A command's argument parser: its name as users type it, its docstring (examples kept as written)."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def full_error_wanted(variables: Sequence[str] = FULL_ERROR_VARIABLES) -> bool:
    """Whether one of the environment `variables` is set to 1."""
    return any(os.environ.get(name) == "1" for name in variables)


def error_line(error: BaseException, hint: str = "") -> str:
    """``error: <message>`` on one line (a message over several lines is joined), `hint` in parentheses."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    message = message or type(error).__name__
    return f"error: {message}" + (f" ({hint})" if hint else "")


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


@contextmanager
def user_errors(
    variables: Sequence[str] = FULL_ERROR_VARIABLES,
    report: Callable[[str], None] = _to_stderr,
    hint: str = "",
) -> Iterator[None]:
    """Turn a user error raised inside into one `report`ed ``error:`` line and exit status 2.

    The error propagates unchanged when one of the environment `variables` is 1.
    """
    try:
        yield
    except USER_ERRORS as e:
        if full_error_wanted(variables):
            raise
        report(error_line(e, hint))
        log.debug("traceback", exc_info=True)  # for a log kept at DEBUG level
        sys.exit(USER_ERROR_EXIT_CODE)


def run_command(command: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run ``command(argv)`` as a command line: INFO logging in plain messages, user errors as one line."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors():
        command(argv)
