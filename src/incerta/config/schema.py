"""The base of every configuration schema and the error that explains a bad configuration."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Sized
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """The configuration is invalid; the message names each wrong key and what was expected."""


class Schema(BaseModel):
    """A configuration section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def as_list(value: Any) -> Any:
    """YAML shorthand: a single item (or nothing) where a list is expected."""
    return [] if value is None else value if isinstance(value, list) else [value]


def at_least(count: int, message: str) -> Callable[[Sized], Sized]:
    """A field check: the value holds at least ``count`` entries, else ``message``."""

    def check(value: Sized) -> Sized:
        if len(value) < count:
            raise ValueError(message)
        return value

    return check


def device_name(value: str) -> str:
    """A field check: auto, cpu, cuda or cuda:N."""
    if value != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise ValueError(f"'{value}' is not a device: use auto, cpu, cuda or cuda:N")
    return value


def one_of(known: Collection[str]) -> Callable[[str | None], str | None]:
    """A field check: the value (if given) is one of ``known``."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in known:
            raise ValueError(f"expected one of {sorted(known)}")
        return value

    return check


def _schema_at(schema: type[BaseModel], location: tuple) -> type[BaseModel] | None:
    for part in location:
        if isinstance(part, int):
            continue
        field = schema.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        for inner in list(candidates):
            candidates += list(getattr(inner, "__args__", ()))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        schema = nested[0]
    return schema


def explain(error: ValidationError, schema: type[BaseModel], origin: str = "config") -> ConfigError:
    """Turn pydantic errors into one message with key paths and suggestions."""
    lines = []
    seen = set()
    for item in error.errors():
        location = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith(("function-", "list["))))
        key = ".".join(str(p) for p in location)
        if item["type"] == "extra_forbidden":
            parent = _schema_at(schema, location[:-1])
            known = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(location[-1]), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(known)}"
            message = f"{key}: unknown key; {hint}"
        else:
            got = item.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            message = f"{key or '(top level)'}: {item['msg']}{shown}"
        if message not in seen:
            seen.add(message)
            lines.append(message)
    return ConfigError(f"{origin}: invalid configuration\n  " + "\n  ".join(lines))
