"""`mergelab merge`: compose conf/merge_job.yaml with Hydra overrides and merge checkpoints.

Only the method is composed through Hydra's defaults list (`merge=ties`, `merge.density=0.2`). The job keys
(`base=`, `experts=[...]`, `out=`, ...) are parsed with Hydra's override grammar but applied to the composed
config directly: `conf/` also holds the `experts` group of `mergelab run`, and Hydra would read
`experts=[A,B]` as a choice from that group. Nothing is written by Hydra itself (no run or output dirs).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mergelab.api.override_hint import quote_hint
from mergelab.engine.checkpoint import CheckpointError
from mergelab.methods import ALIASES, METHODS, MergeConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
JOB_KEYS = (
    "base",
    "experts",
    "out",
    "device",
    "overwrite",
    "max_shard_size",
    "progress",
    "data",
    "allow_nonfinite",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "chat_template",
    "kernel",
    "threads",
    "config",
)
REQUIRED_KEYS = ("base", "experts", "out")
# With config=FILE (a mergekit YAML or a mergelab.json) the file gives the inputs and the method.
CONFIG_FILE_KEYS = ("config", "out", "device", "overwrite", "max_shard_size", "progress", "allow_nonfinite")


def help_text() -> str:
    """Usage, an example, and every method with its hyperparameters and their defaults."""
    lines = [
        "usage: mergelab merge merge=METHOD base=DIR 'experts=[A,B,...]' out=DIR [merge.OPTION=VALUE ...]",
        "                      [device=auto|cpu|cuda] [overwrite=true|force] [max_shard_size=5GB] [progress=false]",
        "                      [allow_nonfinite=true]",
        "                      [dtype=float32|float64] [out_dtype=float32|float16|bfloat16]",
        "                      [tokenizer_source=base|union|expert:I] [chat_template=base|expert:I]",
        "                      [threads=N] [kernel=fused|reference]",
        "       mergelab merge config=FILE out=DIR [device=...] [overwrite=true|force] [progress=false]",
        "",
        "config=FILE reads the merge from a mergekit YAML configuration (merge_method, base_model, models,",
        "parameters; see the README's 'Coming from mergekit') or from a merged directory's mergelab.json,",
        "which merges it again byte for byte.",
        "",
        "Merges experts fine-tuned from one base into a Hugging Face model directory (sharded safetensors,",
        "config and tokenizer copied from the base). base and experts are model directories, safetensors",
        "files or hub ids (a local path always wins). The output is written to a temporary directory beside",
        "out and renamed into place when complete, with mergelab.json (how it was made) and a README.md",
        "model card. An existing out is replaced only with overwrite=true when mergelab wrote it (it has",
        "mergelab.json), or with overwrite=force; an empty directory is fine.",
        "NaN or inf in an input (or a merged) tensor is an error unless allow_nonfinite=true.",
        "",
        "example: mergelab merge merge=ties base=/m/base 'experts=[/m/a,/m/b]' out=/m/merged merge.density=0.2",
        "",
        "Data-aware methods (fisher, regmean) compute a statistic of each expert on its training data, once,",
        "cached under $MERGELAB_HOME/stats; give one data spec per expert, in the experts' order:",
        "  'data=[zoo:color,zoo:place]'    the embedded zoo's train split of a category's (or one task's) tasks",
        "  'data=[/d/task_a,/d/task_b]'    directories written by datasets.save_to_disk (the 'train' split of",
        "                                  a DatasetDict) with columns prompt, target (+ choices, label)",
        "example: mergelab merge merge=fisher base=/m/base 'experts=[/m/a,/m/b]' 'data=[/d/a,/d/b]' out=/m/f",
        "merge=pleas (experts need not share a base; base= gives the tokenizer) runs the experts on the same data",
        "specs; with merge.budget > 1 the merged MLP is wider and out/config.json says so.",
        "",
        "dtype is the compute dtype (float64 only for methods that do not trim); out_dtype the dtype of the",
        "merged float tensors (default: the base's). tokenizer_source=union merges experts whose tokenizers",
        "add tokens: the vocabulary is the base's plus each expert's added tokens, and rows an expert lacks",
        "take the base's row (the mean embedding where the base lacks it too); expert:I takes expert I's",
        "tokenizer and vocabulary. chat_template (default: the tokenizer source's) picks whose chat template",
        "the output carries.",
        "",
        "methods and their options with defaults (the merge=METHOD default is ties; the values of",
        "conf/merge/<method>.yaml are the paper defaults shown here):",
    ]
    for name, method in METHODS.items():
        options = ", ".join(f"{field.name}={field.default}" for field in dataclasses.fields(method.Params))
        lines.append(f"  {name:<16} {options or '(no options)'}")
    lines += ["", "mergekit's method names are accepted as aliases (merge=NAME):"]
    lines += [f"  {name:<16} = {alias.describe()}" for name, alias in ALIASES.items()]
    return "\n".join(lines)


def split_overrides(
    overrides: list[str], group: str = "merge", job_keys: Sequence[str] = JOB_KEYS
) -> tuple[list[str], dict[str, Any]]:
    """(Hydra overrides for the config `group`, parsed values of the job keys); unknown keys are errors.

    `mergelab eval` shares this with `group="eval"` and its own job keys."""
    method_overrides: list[str] = []
    job_values: dict[str, Any] = {}
    parser = OverridesParser.create()
    for text in overrides:
        override = parser.parse_overrides([text])[0]
        key = override.key_or_group
        if key == group or key.startswith(group + "."):
            # `++` lets an unknown `merge.X` through so that the method names the valid options.
            method_overrides.append(text if key == group or text[0] in "+~" else "++" + text)
        elif key in job_keys:
            if override.is_add() or override.is_force_add() or override.is_delete():
                raise MergeConfigError(f"{text}: write {key}=VALUE, without + or ~")
            if override.is_sweep_override():
                raise MergeConfigError(f"{text}: sweeps are not supported here; for a list write {key}=[A,B]")
            job_values[key] = override.value()
        else:
            raise MergeConfigError(
                f"unknown option '{key}'; valid: {group}, {group}.<option>, {', '.join(job_keys)}"
            )
    return method_overrides, job_values


def compose_job_file(
    config_name: str, group_overrides: list[str], job_values: dict[str, Any], required: Sequence[str]
) -> tuple[DictConfig, list[str]]:
    """`conf/<config_name>.yaml` composed with the config-group overrides, then the job keys set on it;
    also the `required` keys still missing (`???`), for the caller to report in its own words."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        config = compose(config_name=config_name, overrides=group_overrides)
    for key, value in job_values.items():
        OmegaConf.update(config, key, value, merge=False)
    return config, [key for key in required if OmegaConf.is_missing(config, key)]


def compose_job(overrides: list[str]) -> DictConfig:
    """The composed job config: conf/merge_job.yaml, the chosen method's group file, then the job keys."""
    method_overrides, job_values = split_overrides(overrides)
    config, missing = compose_job_file("merge_job", method_overrides, job_values, REQUIRED_KEYS)
    if missing:
        raise MergeConfigError(
            f"missing required option(s): {', '.join(missing)} (see `mergelab merge --help`)"
        )
    if not OmegaConf.is_list(config.experts):
        raise MergeConfigError(f"experts must be a list, e.g. 'experts=[/m/a,/m/b]', not {config.experts!r}")
    if config.data is not None and not OmegaConf.is_list(config.data):
        raise MergeConfigError(f"data must be a list, e.g. 'data=[zoo:color,zoo:place]', not {config.data!r}")
    for key in ("progress", "allow_nonfinite"):
        if not isinstance(config[key], bool):
            raise MergeConfigError(f"{key} must be true or false, not {config[key]!r}")
    if not (isinstance(config.overwrite, bool) or config.overwrite == "force"):
        raise MergeConfigError(f"overwrite must be true, false or force, not {config.overwrite!r}")
    for key, value in [("base", config.base), ("out", config.out)] + [("experts", e) for e in config.experts]:
        if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
            raise MergeConfigError(f"{key}={value!r} is not a path; {key} needs a directory, file or hub id")
    return config


def run(overrides: list[str]) -> int:
    """Compose the job and merge; the summary line goes to stdout."""
    from mergelab.api.merging import merge

    method_overrides, job_values = split_overrides(overrides)
    if "config" in job_values:
        return run_config_file(method_overrides, job_values)
    config = compose_job(overrides)
    hparams = OmegaConf.to_container(config.merge, resolve=True)
    method = hparams.pop("method")
    merge(
        str(config.base),
        [str(expert) for expert in config.experts],
        method,
        str(config.out),
        device=str(config.device),
        overwrite=config.overwrite,
        max_shard_size=config.max_shard_size,
        progress=config.progress,
        data=None if config.data is None else [str(spec) for spec in config.data],
        allow_nonfinite=config.allow_nonfinite,
        dtype=str(config.dtype),
        out_dtype=None if config.out_dtype is None else str(config.out_dtype),
        tokenizer_source=str(config.tokenizer_source),
        chat_template=None if config.chat_template is None else str(config.chat_template),
        kernel=str(config.kernel),
        threads=config.threads,
        **hparams,
    )
    return 0


def run_config_file(method_overrides: list[str], job_values: dict[str, Any]) -> int:
    """`mergelab merge config=FILE out=DIR [...]`: the merge comes from FILE; only run options may be given."""
    from mergelab.api.reproduce import merge_from_config

    extra = [key for key in job_values if key not in CONFIG_FILE_KEYS] + method_overrides[:1]
    if extra:
        key = extra[0].lstrip("+~").split("=")[0]
        allowed = ", ".join(CONFIG_FILE_KEYS)
        raise MergeConfigError(f"config= gives the inputs and the method: remove {key} (allowed: {allowed})")
    if "out" not in job_values:
        raise MergeConfigError("missing required option(s): out (see `mergelab merge --help`)")
    options = {key: value for key, value in job_values.items() if key not in ("config", "out")}
    if "progress" in options and not isinstance(options["progress"], bool):
        raise MergeConfigError(f"progress must be true or false, not {options['progress']!r}")
    merge_from_config(str(job_values["config"]), str(job_values["out"]), **options)
    return 0


def main(argv: list[str]) -> int:
    """`mergelab merge [overrides]`: 0 on success; expected user errors print one line and return 2."""
    if any(arg in {"-h", "--help", "help"} for arg in argv):
        print(help_text())
        return 0
    try:
        return run(argv)
    except (CheckpointError, MergeConfigError, HydraException, OmegaConfBaseException) as error:
        message = " ".join(str(error).split()).split(" Config search path")[0] or type(error).__name__
        message = quote_hint(message, argv)
        print(f"mergelab merge: error: {message}", file=sys.stderr)
        return 2
