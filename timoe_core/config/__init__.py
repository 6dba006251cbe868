"""Configs for every command: pydantic models, loaded from YAML/TOML, overridden by flags.

One rule for all commands: `resolve_config(Model, config_file, flags)` reads the file
(if any), lays every flag that was given (not None) over it, and validates. The
resolved config is saved next to the command's output with `save_config`, so a run
can be repeated with `--config that-file`.

The package's public names are the configs and those functions; each lives in the
module of its concern: `fields` (what every config model is built from), `data`,
`training`, `mixture`, `applications` (each command family's configs) and `files`
(reading, resolving and saving config files).
"""

from timoe_core.config.applications import (
    DemoConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    ImportConfig,
)
from timoe_core.config.data import PrepareDataConfig
from timoe_core.config.fields import flag_name, reading_recorded_config
from timoe_core.config.files import (
    CONFIG_FILENAME,
    config_to_dict,
    format_validation_error,
    is_saved_config,
    read_config_file,
    resolve_config,
    save_config,
)
from timoe_core.config.mixture import (
    AdaptedWeights,
    CoadaptConfig,
    MixtureOptions,
    TrainRouterConfig,
)
from timoe_core.config.training import TrainExpertConfig, TrainingConfig

__all__ = [
    "CONFIG_FILENAME",
    "AdaptedWeights",
    "CoadaptConfig",
    "DemoConfig",
    "EvaluateConfig",
    "ExportConfig",
    "GenerateConfig",
    "ImportConfig",
    "MixtureOptions",
    "PrepareDataConfig",
    "TrainExpertConfig",
    "TrainRouterConfig",
    "TrainingConfig",
    "config_to_dict",
    "flag_name",
    "format_validation_error",
    "is_saved_config",
    "read_config_file",
    "reading_recorded_config",
    "resolve_config",
    "save_config",
]
