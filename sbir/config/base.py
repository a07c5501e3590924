"""The base of every config section: unknown keys are errors, and so are bad values set after loading;
and the one rule for names that become folder names (run, sweep and evaluation-target names)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(value: str, what: str = "name") -> str:
    """``value`` when it is a plain name (letters, digits, '.', '_', '-'; at most 128; not starting with '.'),
    else ValueError: such names become one folder under a directory the user chose, never a path."""
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a name: use letters, digits, '.', '_' and '-' (at most 128, starting with "
            "a letter or digit); it becomes a folder name, so it can be neither a path nor '..'"
        )
    return value


Name = Annotated[str, AfterValidator(check_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
