"""Command-line flags made from config dataclasses: a field whose metadata holds a help
text (``scratchlm.config.setting``) becomes one flag, so each default is written once, in
the dataclass, and the help shows it."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of the dataclass ``cls`` that are command-line flags, in order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def add_config_flags(
    parser: argparse._ActionsContainer,
    cls: type,
    *,
    skip: frozenset[str] | set[str] = frozenset(),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add a flag for each flag field of ``cls`` but those in ``skip``.

    A flag not given parses to None, so a config file's value or ``defaults`` stand under
    it (``given_settings``). The help ends with the default a command really uses:
    ``defaults`` (e.g. instruction tuning's) where given, else the field's.
    """
    hints = typing.get_type_hints(cls)
    for f in flag_fields(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, field_default(f))
        kind = _without_none(hints[f.name])
        options: dict[str, Any] = {"dest": f.name, "default": None}
        if kind is bool:  # a switch: it turns the default around
            options["action"] = "store_false" if default else "store_true"
        elif "nargs" in f.metadata:
            options.update(nargs=f.metadata["nargs"], type=typing.get_args(kind)[0])
        elif typing.get_origin(kind) is list:
            options.update(action="append", type=typing.get_args(kind)[0])
        else:
            options["type"] = kind
        if "metavar" in f.metadata:
            options["metavar"] = f.metadata["metavar"]
        options["help"] = _help(f.metadata["help"], default, kind)
        parser.add_argument(flag_name(f), **options)


def keyword_default(func: Callable[..., Any], name: str) -> Any:
    """The default of ``func``'s argument ``name``: a flag that passes its value to a
    library function shows the default written once, in that function's signature."""
    return inspect.signature(func).parameters[name].default


def given_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """``{field: value}`` of the flag fields of ``cls`` that the command line gave."""
    values = {f.name: getattr(args, f.name, None) for f in flag_fields(cls)}
    return {name: value for name, value in values.items() if value is not None}


def _without_none(hint: Any) -> Any:
    """``int`` for ``int | None``; other hints as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint


def _help(text: str, default: Any, kind: Any) -> str:
    """The help text, plus the default where it is a value (an empty or None default is
    described by the text itself; a switch's default is that it is off)."""
    text = text.replace("%", "%%")  # argparse %-formats help texts
    if kind is bool or default is None or default in ("", []):
        return text
    shown = ", ".join(map(repr, default)) if isinstance(default, list) else default
    return f"{text} (default: {shown})"
