"""Validation of lot and scan identifiers.

Every identifier that comes from outside (a folder name in the landing store, a file stem, a
row of ``labels.csv``, a command-line argument) is validated here *before* it touches a path,
a Dagster partition key or SQL. The rule is shared/DESIGN.md's:
``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``. It excludes ``/``, ``..`` as a whole name (a leading
dot is not allowed), spaces, commas and ``|`` (which break Dagster partition ranges), and any
non-ASCII character.
"""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class InvalidIdError(ValueError):
    """An identifier that does not match :data:`ID_PATTERN`."""


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string that may be used as a lot or scan id."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None and ".." not in value


def validate_id(value: object, kind: str = "id") -> str:
    """Return ``value`` unchanged if it is a valid id, else raise :class:`InvalidIdError`.

    The message quotes the value with ``repr`` (so control characters are visible) and says
    why it is refused; it never echoes more than 80 characters.
    """
    if not isinstance(value, str):
        raise InvalidIdError(f"{kind} must be a string, got {type(value).__name__}")
    if not is_valid_id(value):
        shown = repr(value[:80]) + ("..." if len(value) > 80 else "")
        raise InvalidIdError(
            f"invalid {kind} {shown}: must match {ID_PATTERN.pattern} "
            "(letters, digits, '.', '_', '-'; starts with a letter or digit; at most 64 "
            "characters; no '..')"
        )
    return value
