"""Reading YAML configurations: overrides, validation with helpful errors, relative paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from incerta.config.data import DataSource
from incerta.config.schema import ConfigError, Schema, explain
from incerta.config.training import RunConfig

S = TypeVar("S", bound=Schema)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.lr=0.01' -> (['training', 'lr'], 0.01); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return raw


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, training)")
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run configuration; relative data paths are taken from the file's folder."""
    return load_experiment(path, RunConfig, overrides)


def load_experiment(path: str | Path, schema: type[S], overrides: list[str] = ()) -> S:
    """Read a YAML experiment configuration with the same checks and messages as run configs."""
    path = Path(path)
    raw = _read_yaml(path)
    raw = apply_overrides(raw, list(overrides))
    try:
        config = schema.model_validate(raw)
    except ValidationError as err:
        raise explain(err, schema, str(path)) from None
    for source in _sources(config):
        if not source.path.is_absolute():
            source.path = (path.parent / source.path).resolve()
    model = getattr(getattr(config, "shift", None), "model", None)
    if model is not None and not model.is_absolute():
        config.shift.model = (path.parent / model).resolve()
    return config


def _sources(node) -> list[DataSource]:
    """Every DataSource inside a config tree."""
    if isinstance(node, DataSource):
        return [node]
    if isinstance(node, BaseModel):
        return [s for name in type(node).model_fields for s in _sources(getattr(node, name))]
    if isinstance(node, (list, tuple)):
        return [s for item in node for s in _sources(item)]
    if isinstance(node, dict):
        return [s for item in node.values() for s in _sources(item)]
    return []
