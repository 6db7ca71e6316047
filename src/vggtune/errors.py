"""The one exception type for a user's mistake: the CLI prints it as one line and exits 2.

Messages name what was received and what is allowed in the command line's words (`--out`, `--finetune-lr`).
Raised through the Python API (`python_words`, around each verb of api.py) they speak its words instead:
`out`, `finetune_lr=`; the command line says it runs inside `command_line()`, where they stay as written.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re

_COMMAND_LINE = contextvars.ContextVar("vggtune_command_line", default=False)
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)(:| (?=[\w./~]))?")


class UserError(Exception):
    """A mistake the user can fix: names what was received and what is allowed."""


def choice_error(what: str, received, allowed) -> UserError:
    allowed_text = ", ".join(str(a) for a in allowed)
    return UserError(f"{what}: received {received!r}; allowed: {allowed_text}")


@contextlib.contextmanager
def command_line():
    """Inside: user errors keep the command line's words (the flags)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def in_python_words(message: str) -> str:
    """A flag as the Python API's keyword: `--finetune-lr: received` -> `finetune_lr: received`, `--out RUN` ->
    `out=RUN`, `--resume` -> `resume=`."""
    parts = message.split("`")  # a command in backticks (`pip install --no-deps ...`) is quoted as it is
    for i in range(0, len(parts), 2):
        parts[i] = _FLAG.sub(lambda m: m.group(1).replace("-", "_") + (":" if m.group(2) == ":" else "="), parts[i])
    return "`".join(parts)


def python_words(verb):
    """`verb` of the Python API: a UserError it raises names keywords (`out=`), not flags, unless the command
    line called it."""

    @functools.wraps(verb)
    def speaking(*args, **kwargs):
        try:
            return verb(*args, **kwargs)
        except UserError as exc:
            if _COMMAND_LINE.get():
                raise
            raise UserError(in_python_words(str(exc))) from None

    return speaking
