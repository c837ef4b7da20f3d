"""Dataclass fields -> argparse flags, with each field's trailing ``# comment`` as its help text.

The config dataclasses stay the one place where an option, its default and its meaning are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing
from typing import Any

_COMMENTED_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` read from the class source (``name: type = default  # comment``)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            match = _COMMENTED_FIELD.match(line)
            if match:
                comments[match.group(1)] = match.group(2).strip()
    return comments


def _flag(name: str, prefix: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (use true/false)")


def _parse_json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({err.msg}); e.g. '{{\"depth\": 4}}'") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object; e.g. '{{\"depth\": 4}}'")
    return value


def _tuple_converter(items: tuple[Any, ...]):
    """``"0.9,0.999"`` -> (0.9, 0.999); a wrong count or a non-number is an error naming the value."""
    inner = items[0]
    count = None if len(items) == 2 and items[1] is Ellipsis else len(items)

    def convert(text: str) -> tuple:
        parts = text.split(",")
        try:
            values = tuple(inner(v) for v in parts)
        except ValueError:
            values = None
        if values is None or (count is not None and len(values) != count):
            shape = f"{count} comma-separated {inner.__name__}s" if count else f"comma-separated {inner.__name__}s"
            raise argparse.ArgumentTypeError(f"{text!r} is not {shape}")
        return values

    return convert


def _optional(kind: Any) -> tuple[Any, bool]:
    """(inner type, is Optional) for ``X | None``."""
    args = typing.get_args(kind)
    if (typing.get_origin(kind) in (typing.Union, types.UnionType)) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return kind, False


def _converter(kind: Any, optional: bool):
    base = {int: int, float: float, str: str, bool: _parse_bool}.get(kind)
    if typing.get_origin(kind) is tuple:
        return _tuple_converter(typing.get_args(kind))
    if typing.get_origin(kind) is dict or kind is dict:
        return _parse_json_object
    if base is None:
        return str
    if optional:
        return lambda text: None if text.lower() == "none" else base(text)
    return base


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                        skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of ``cls`` (nested dataclasses are skipped; add them with their own prefix)."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        kind, optional = _optional(hints[f.name])
        if f.name in skip or dataclasses.is_dataclass(kind):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = comments.get(f.name, "")
        shown = json.dumps(default) if isinstance(default, dict) else default
        parser.add_argument(
            _flag(f.name, prefix), dest=prefix + f.name, type=_converter(kind, optional), default=None,
            metavar=kind.__name__.upper() if isinstance(kind, type) else "VALUE",
            help=f"{help_text} (default: {shown})",
        )


def dataclass_overrides(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, prefix + f.name, None)
        if value is not None:
            out[f.name] = value
    return out
