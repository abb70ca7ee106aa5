"""Which column of the user's data holds each role (`text`, `label`, `prompt`, `response`), and the refusals:
a column flag the task would ignore, a missing column (named with the file's columns, quoted, so a name with a
space around it shows), and chat-format data, which training does not read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..delimited import separator_hint
from ..errors import DataError, UsageError
from ..tasks import TASKS, Task

__all__ = ["chat_error", "check_columns", "column_names", "is_chat", "resolve_columns"]


def resolve_columns(task: Task, flags: dict, rows: list[dict], path: Path) -> dict[str, str]:
    """The column of each role: the mapping a column flag names, else the first the file's columns fit.

    Raises:
        UsageError: a column flag the task does not read, or flags of two of its mappings.
        DataError: a column not in the file, or a column of chat messages.
    """
    _check_flags(task, [role for role in flags if flags[role]])
    flagged = [roles for roles in task.column_roles if any(flags.get(role) for role in roles)]
    roles = flagged[0] if flagged else task.default_columns(column_names(rows))
    columns = {role: flags.get(role) or role for role in roles}
    check_columns(columns, rows, path)
    return columns


def _check_flags(task: Task, given: list[str]) -> None:
    """Refuse a column flag that would be ignored: one the task does not read, or one of another mapping."""
    flag = "--{}-column".format
    foreign = [role for role in given if not any(role in roles for roles in task.column_roles)]
    if foreign:
        owners = [t.name for t in TASKS.values() if any(set(foreign) & set(roles) for roles in t.column_roles)]
        only = f"--task {' / '.join(owners)} only" if owners else "no task"
        raise UsageError(f"{', '.join(map(flag, foreign))} {'applies' if len(foreign) == 1 else 'apply'} to "
                         f"{only}; --task {task.name} reads {_mappings(task)}")
    used = [roles for roles in task.column_roles if set(roles) & set(given)]
    if len(used) > 1:
        raise UsageError(f"{' and '.join(map(flag, given))} cannot be used together: --task {task.name} reads "
                         f"{_mappings(task)}; pass the flags of one")


def _mappings(task: Task) -> str:
    """`--prompt-column with --response-column, or --text-column alone`"""
    return ", or ".join(" with ".join(f"--{role}-column" for role in roles) + (" alone" if len(roles) == 1 else "")
                        for roles in task.column_roles)


def column_names(rows: list[dict]) -> list[str]:
    """Every key of every row, in order of first appearance (JSON rows need not all have the same keys)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def check_columns(columns: dict[str, str], rows: list[dict], path: Path) -> None:
    """Raises DataError for a column of `columns` (role -> name) that no row of `rows` has."""
    found = column_names(rows)
    listed = ", ".join(repr(str(name)) for name in found)
    for role, name in columns.items():
        if name in found:
            continue
        spaced = next((str(col) for col in found if str(col).strip() == name.strip()), None)
        if spaced is not None:
            where = "the header" if spaced != spaced.strip() else f"--{role}-column"
            raise DataError(f"column {name!r} not found in {path}, but {spaced!r} is: {where} puts spaces around "
                            f"the name (columns: {listed}); remove them from {where}, or pass --{role}-column "
                            f"{spaced!r}")
        chat = next((col for col in found if any(is_chat(row.get(col)) for row in rows[:20])), None)
        if chat is not None:
            raise DataError(chat_error(chat, path))
        raise DataError(separator_hint(path, found) or f"column {name!r} not found in {path} (columns: {listed}); "
                        f"pass --{role}-column with one of them")


def is_chat(value: Any) -> bool:
    """A list of chat messages: `[{"role": ..., "content": ...}, ...]`."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def chat_error(name: str, path: Path) -> str:
    """The one-line refusal of a column of chat messages, with the way to write the data instead."""
    return (f"column {name!r} of {path} holds chat messages (lists of role/content objects), and training does "
            "not read chat-format data; for --task generate write one JSON object per exchange, the user's message "
            "in 'prompt' and the assistant's reply in 'response' (or pass --prompt-column and --response-column): "
            "training renders each prompt as one user message through the base model's chat template, when it has "
            "one, as the bundle does at run time")
