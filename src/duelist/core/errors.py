"""User-facing errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = 2


class DuelistError(Exception):
    """A problem the user can fix: the message names the file/row/key, what is wrong and what to do."""


def exit_cleanly_on_user_error(fn: F) -> F:
    """Turn a DuelistError into ``error: <message>`` on stderr and exit code 2.

    With ``HYDRA_FULL_ERROR=1`` the exception propagates so the full traceback is shown.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DuelistError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper  # type: ignore[return-value]
