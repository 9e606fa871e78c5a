"""`mergelab merge`: compose conf/merge_job.yaml with Hydra overrides and merge checkpoints."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mergelab.checkpoint import CheckpointError
from mergelab.methods import METHODS, MergeConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
JOB_KEYS = ("base", "experts", "out", "device", "overwrite", "max_shard_size", "progress")


def help_text() -> str:
    lines = [
        "usage: mergelab merge merge=METHOD base=DIR 'experts=[A,B,...]' out=DIR [merge.OPTION=VALUE ...]",
        "                      [device=auto|cpu|cuda] [overwrite=true] [max_shard_size=5GB]",
        "",
        "Merges experts fine-tuned from one base into a Hugging Face model directory (sharded safetensors,",
        "config and tokenizer copied from the base). Paths, safetensors files and hub ids are accepted.",
        "",
        "example: mergelab merge merge=ties base=/m/base 'experts=[/m/a,/m/b]' out=/m/merged merge.density=0.2",
        "",
        "methods and their options (defaults from conf/merge/<method>.yaml):",
    ]
    for name, method in METHODS.items():
        options = ", ".join(f"{field.name}={field.default}" for field in dataclasses.fields(method.Params))
        lines.append(f"  {name:<16} {options}")
    return "\n".join(lines)


def compose_job(overrides: list[str]):
    """The composed job config; `merge.X=V` may add X so that the method itself judges unknown options."""
    prepared = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("merge.") and not override.startswith(("+", "~")):
            override = "++" + override
        elif key not in (*JOB_KEYS, "merge") and not key.startswith("merge."):
            raise MergeConfigError(
                f"unknown option '{key}'; valid: merge, merge.<option>, {', '.join(JOB_KEYS)}"
            )
        prepared.append(override)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="merge_job", overrides=prepared)


def run(overrides: list[str]) -> int:
    from mergelab.api import merge

    config = compose_job(overrides)
    missing = [key for key in ("base", "experts", "out") if OmegaConf.is_missing(config, key)]
    if missing:
        raise MergeConfigError(
            f"missing required option(s): {', '.join(missing)} (see `mergelab merge --help`)"
        )
    experts = config.experts
    if isinstance(experts, str) or not OmegaConf.is_list(experts):
        raise MergeConfigError("experts must be a list, e.g. 'experts=[/m/a,/m/b]'")
    hparams = OmegaConf.to_container(config.merge, resolve=True)
    method = hparams.pop("method")
    merge(
        str(config.base),
        [str(expert) for expert in experts],
        method,
        str(config.out),
        device=config.device,
        overwrite=bool(config.overwrite),
        max_shard_size=config.max_shard_size,
        progress=bool(config.progress),
        **hparams,
    )
    return 0


def main(argv: list[str]) -> int:
    if any(arg in {"-h", "--help", "help"} for arg in argv):
        print(help_text())
        return 0
    try:
        return run(argv)
    except (CheckpointError, MergeConfigError, HydraException, OmegaConfBaseException) as error:
        message = " ".join(str(error).split()).split(" Config search path")[0] or type(error).__name__
        print(f"mergelab merge: error: {message}", file=sys.stderr)
        return 2
