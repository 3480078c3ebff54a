"""Typed YAML for recipes: values coerced to a dataclass's annotations, field checks and ``--set``
overrides, each error naming the field by its dotted path (``recipe field distill.alpha: ...``)."""

from __future__ import annotations

import copy
import dataclasses
import math
import reprlib
import typing
from typing import Any

import yaml

from edgekit import registry
from edgekit.errors import EdgekitError


class RecipeError(EdgekitError):
    pass


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 40, 40, 4, 4, 2
SEED_MAX = 2**32 - 1  # numpy and torch seeds


def shown(value: Any) -> str:
    """A value as an error message shows it: short, whatever its size (a YAML alias bomb is huge)."""
    return _SHORT.repr(value)


def check_range(path: str, value: float | None, low: float, high: float, *, low_open=False, high_open=False) -> None:
    if value is None:
        return
    if not math.isfinite(value):  # NaN compares false with everything: it would pass every bound below
        raise RecipeError(f"recipe field {path}: {value} is not a finite number")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise RecipeError(f"recipe field {path}: {value} is outside {lo}{low}, {high}{hi}")


def check_choice(path: str, value: Any, choices: tuple[str, ...] | str) -> None:
    """``choices``: the allowed values, or a registry kind whose names they are."""
    if isinstance(choices, str):
        choices = registry.names(choices)
    if value not in choices:
        raise RecipeError(f"recipe field {path}: {shown(value)} is not one of {', '.join(choices)}")


def validate_tree(obj: Any, path: str) -> None:
    obj.validate(path)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate_tree(value, f"{path}.{f.name}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a RecipeError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise RecipeError(f"recipe field {path}: expected a mapping of fields, got {shown(value)}")
        return from_dict(tp, value, path)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise RecipeError(f"recipe field {path}: expected a mapping, got {shown(value)}")
        return {_coerce(k, args[0], path): _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise RecipeError(f"recipe field {path}: expected a list, got {shown(value)}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"recipe field {path}: expected true or false, got {shown(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"recipe field {path}: expected a whole number, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"recipe field {path}: expected a number, got {shown(value)}")
        if not math.isfinite(value):
            raise RecipeError(f"recipe field {path}: {value} is not a finite number; give a number such as 0.5")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise RecipeError(f"recipe field {path}: expected text, got {shown(value)}")
        return str(value)
    raise RecipeError(f"recipe field {path}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise RecipeError(
                f"recipe field {shown(full) if len(str(full)) > 60 else full} is unknown; allowed fields here: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=c`` (the value read as YAML) into (["a", "b"], c)."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: write overrides as section.field=value, e.g. distill.alpha=0.5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set {text!r}: the field name is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {text!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data
