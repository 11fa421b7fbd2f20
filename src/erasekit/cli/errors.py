"""The CLI's error boundary: failures the user can fix become one line and exit code 2.

A command that raises one of the exception types below (bad values, unreadable or
malformed input files, missing models, unusable deltas) ends with ``error: <one
line>`` on stderr and exit code 2; anything else is a bug and keeps its traceback.
``ERASEKIT_TRACEBACK=1`` shows the traceback of user errors too.

Types are matched by class name along the exception's MRO, so the boundary needs
no import of the layers that define them.
"""

from __future__ import annotations

import os

from typer.core import TyperGroup

# RuntimeError/KeyError subclasses whose message is meant for the user
USER_ERROR_NAMES = frozenset({
    "ModelNotFoundError", "UnsupportedModelError", "GenerationMismatchError", "DetectorUnavailableError",
    "UnknownNameError", "UnknownConceptError", "UnknownMethodError", "UnknownScopeError", "UnknownDetectorError", "UnknownAttackError",
    "NonFiniteLossError", "ScorerUnavailableError", "BudgetExceededError", "NoStoredCellsError",
    "SafetensorError", "YAMLError", "ValidationError", "UserInputError",
})
TRACEBACK_ENV = "ERASEKIT_TRACEBACK"
MAX_CHARS = 400


class UserInputError(ValueError):
    """A command-line value or input file the command cannot use; the message names it and what to do."""


def is_user_error(err: BaseException) -> bool:
    names = {k.__name__ for k in type(err).__mro__}
    return isinstance(err, (ValueError, OSError)) or bool(names & USER_ERROR_NAMES)


def _validation_text(err) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(map(str, e.get("loc", ()))) or "<root>"
        parts.append(f"{loc}: {e.get('msg')}")
    more = f" (and {err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return f"invalid {err.title}: " + "; ".join(parts) + more


def one_line(err: BaseException) -> str:
    """``err`` as one line that names the input where the exception knows it."""
    names = {k.__name__ for k in type(err).__mro__}
    if "ValidationError" in names and hasattr(err, "errors"):
        text = _validation_text(err)
    elif isinstance(err, UnicodeDecodeError):
        text = f"input is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at position {err.start}); " \
               "save it as UTF-8"
    elif "YAMLError" in names:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        text = f"malformed YAML{where}: {getattr(err, 'problem', None) or str(err).splitlines()[0]}"
    elif isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    elif isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = lines[0] + ("" if len(lines) < 2 else " " + "; ".join(lines[1:])) if lines else type(err).__name__
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 3] + "..."


class ErrorBoundaryGroup(TyperGroup):
    """A Typer group whose commands' user errors end as one line (exit 2) instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as err:  # noqa: BLE001 -- sorted into user errors and bugs below
            if not is_user_error(err) or os.environ.get(TRACEBACK_ENV):
                raise
            from .common import fail

            fail(one_line(err))
