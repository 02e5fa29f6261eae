"""Configuration: YAML files validated by typed schemas with helpful errors.

Every option is documented in ``configs/example.yaml``. Unknown keys are rejected with a
"did you mean ..." hint; values are checked for type and range. This package imports only
:mod:`incerta.data` and :mod:`incerta.utils`; each module holds the schemas of one part
(``data``, ``model``, ``training``, ``uncertainty``, ``experiments``, ``active``), and
:mod:`~incerta.config.sources` turns a ``data`` section into frames.
"""

from incerta.config.active import ALConfig
from incerta.config.data import DataConfig, DataSource
from incerta.config.experiments import OODConfig, ShiftConfig
from incerta.config.loading import apply_overrides, load_config, load_experiment
from incerta.config.model import ModelConfig
from incerta.config.schema import ConfigError
from incerta.config.training import RunConfig, TrainingConfig
from incerta.config.uncertainty import FitSection

__all__ = [
    "ALConfig", "ConfigError", "DataConfig", "DataSource", "FitSection", "ModelConfig", "OODConfig", "RunConfig",
    "ShiftConfig", "TrainingConfig", "apply_overrides", "load_config", "load_experiment",
]
