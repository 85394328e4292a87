"""Turn a cell body into prompts: one per line, comments and blanks skipped, variables expanded.

IPython expands ``{name}`` and ``$name`` only in a magic's first line; a prompt list is written in
the body, so the body gets the same expansion, with IPython's own formatter and the user namespace.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..jobs import prompt_lines, read_prompts
from ..options import NbdistUsageError

__all__ = ["expand", "parse_prompts", "prompts_from_namespace"]


def expand(line: str, namespace: Mapping[str, Any]) -> str:
    """Expand ``{expr}`` and ``$name`` like IPython does for shell commands; leave the line as is on error."""
    from IPython.utils.text import DollarFormatter

    try:
        return DollarFormatter().vformat(line, args=[], kwargs=namespace)
    except Exception:
        return line


def parse_prompts(cell: str, namespace: Mapping[str, Any]) -> list[str]:
    """Prompts of a cell body, in order, by the rule of prompt files (``jobs.prompt_lines``), then expanded."""
    return prompt_lines(expand(line, namespace) for line in prompt_lines(cell.splitlines()))


def prompts_from_namespace(name: str, namespace: Mapping[str, Any]) -> list[str]:
    """``--prompts NAME``: a list (or other iterable) of strings from the user's namespace, else a file.

    A variable wins over a file of the same name; a file is read like the CLI's ``--prompts FILE``
    (one prompt per line, blanks and ``#`` lines skipped), so a prompts file works in both places.
    """
    if name not in namespace:
        if os.path.isfile(os.path.expanduser(name)):
            return read_prompts(os.path.expanduser(name))
        raise NbdistUsageError(
            f"--prompts {name}: no variable named {name!r} and no file {name!r}; "
            "give a list of strings in the namespace or a file with one prompt per line"
        )
    value = namespace[name]
    if isinstance(value, str):
        return [value]
    try:
        prompts = [str(p).strip() for p in value]
    except TypeError:
        raise NbdistUsageError(f"--prompts {name}: expected a list of strings, got {type(value).__name__}") from None
    return [p for p in prompts if p]
