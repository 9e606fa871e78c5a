"""Compose `conf/config.yaml` with overrides and expand sweeps into one override list per run.

`mergelab run` plans every run of a sweep before Hydra launches any: each combination is composed and
validated here, so a typo fails at once with one line, and the planned config hashes let the runner print
the sweep's summary when the launcher returns. `runner.run_study` uses the same expansion to run a study
in-process. Sweeps combine the experiment's `hydra.sweeper.params` with the command line's comma lists,
exactly as Hydra's basic sweeper does.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mergelab.experiment.config import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CONFIG_NAME = "config"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _hydra_error(error: Exception) -> ConfigError:
    """A Hydra composition error rewritten as one line naming the key and the allowed values."""
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, choice = error.missing_cfg_file.rpartition("/")
        options = error.options or sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
        if group:
            return ConfigError(f"{group}: {choice!r} is not allowed; allowed: {', '.join(options)}")
    message = _one_line(error)
    unknown = re.search(r"Could not override '([^']+)'", message) or re.search(
        r"Key '([^']+)' is not in struct", message
    )
    if unknown:
        key = unknown.group(1)
        parent, _, _ = key.rpartition(".")
        try:
            node = compose([])
            node = OmegaConf.select(node, parent) if parent else node
            allowed = ", ".join(str(name) for name in node) if isinstance(node, DictConfig) else ""
        except ConfigError:
            allowed = ""
        return ConfigError(f"unknown key '{key}'" + (f"; allowed keys: {allowed}" if allowed else ""))
    return ConfigError(message)


def compose(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The composed run config for `overrides` (Hydra errors become a one-line ConfigError)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="mergelab"):
            return hydra_compose(CONFIG_NAME, overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as error:
        raise _hydra_error(error) from None


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """One override list per run: the sweep params of the composed config and of `overrides`, crossed."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as error:
        raise ConfigError(_one_line(error)) from None
    sweeps = [override.input_line for override in parsed if override.is_sweep_override()]
    if not multirun:
        if sweeps:
            raise ConfigError(f"{sweeps[0]}: a sweep needs -m (multirun)")
        return [overrides]
    fixed = [override.input_line for override in parsed if not override.is_sweep_override()]
    params = compose(fixed, with_hydra=True).hydra.sweeper.params or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + overrides
    try:
        (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    except HydraException as error:
        raise ConfigError(_one_line(error)) from None
    return batch


# Launchers whose jobs run on other machines (checks of this machine's devices do not apply to them).
REMOTE_LAUNCHERS = ("SlurmLauncher", "RayLauncher")


def launches_here(overrides: list[str]) -> bool:
    """Whether the launcher chosen by `overrides` runs the jobs on this machine (basic, joblib, local)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [override.input_line for override in parsed if not override.is_sweep_override()]
    target = str(compose(fixed, with_hydra=True).hydra.launcher.get("_target_", ""))
    return not target.endswith(REMOTE_LAUNCHERS)


def plan(overrides: list[str], multirun: bool) -> list[tuple[list[str], DictConfig]]:
    """Every run of the command line as (its overrides, its composed config), composed up front."""
    return [(run_overrides, compose(run_overrides)) for run_overrides in expand(overrides, multirun)]
