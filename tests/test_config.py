"""Composition of every config group and experiment of the real conf/, and one-line config errors."""

from __future__ import annotations

import pytest

from mergelab.experiment.config import ConfigError, validate
from mergelab.experiment.sweep import CONF_DIR, compose, expand, plan

GROUPS = ["model", "experts", "eval", "logger", "experiment"]


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    assert options(group), group
    for option in options(group):
        config = compose([f"{group}={option}"])
        if group != "experiment":
            assert config[group] is not None


def test_model_presets_cover_the_zoo_and_the_hub():
    from mergelab import zoo

    presets = set(options("model"))
    assert set(zoo.SIZES) <= presets
    assert {"flan-t5-base", "t5-base", "qwen2.5-0.5b", "pythia-410m"} <= presets
    for size in zoo.SIZES:
        assert compose([f"model={size}"]).model.size == size
    assert compose(["model=qwen2.5-0.5b"]).model.path == "Qwen/Qwen2.5-0.5B"


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("ray", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"),
    ],
)
def test_launchers_compose_without_their_plugins_installed(launcher, target):
    config = compose([f"hydra/launcher={launcher}"], with_hydra=True)
    assert config.hydra.launcher._target_ == target


def test_joblib_is_the_default_sweep_launcher():
    assert compose([], with_hydra=True).hydra.launcher._target_.endswith("JoblibLauncher")


def test_default_study_sweeps_four_methods_two_base_kinds_three_expert_counts(micro_zoo):
    runs = plan(["experiment=default_study"], multirun=True)
    assert len(runs) == 4 * 2 * 3
    specs = [validate(config) for _, config in runs]
    assert {spec.method for spec in specs} == {"average", "task_arithmetic", "ties", "dare"}
    assert {spec.config.experts.base_kind for spec in specs} == {"base", "it"}
    assert {len(spec.categories) for spec in specs} == {2, 4, 8}
    assert {spec.config.model.size for spec in specs} == {"xs"}
    assert len({spec.config_hash for spec in specs}) == len(specs)


def test_command_line_sweeps_cross_and_override_the_experiment_sweep():
    runs = expand(["experiment=micro_smoke", "experts.n_experts=2", "seed_less=1,2"], multirun=True)
    assert len(runs) == 2 * 1 * 2
    assert all("experts.n_experts=2" in run for run in runs)
    with pytest.raises(ConfigError, match="needs -m"):
        expand(["merge=ties,dare"], multirun=False)


def test_config_hash_follows_the_run_not_its_bookkeeping(micro_zoo):
    base = ["model=micro", "experts.n_experts=3"]
    reference = validate(compose(base))
    for same in (["logger=none"], ["device=cpu"], ["force=true"], ["results_dir=/elsewhere"]):
        assert validate(compose(base + same)).config_hash == reference.config_hash, same
    for different in (
        ["merge=dare"],
        ["merge.scale=0.5"],
        ["experts.subset_seed=1"],
        ["eval.max_examples=4"],
    ):
        assert validate(compose(base + different)).config_hash != reference.config_hash, different


def test_merging_every_expert_is_one_run_whatever_the_seed(micro_zoo):
    hashes = {
        validate(compose(["experts.n_experts=8", f"experts.subset_seed={seed}"])).config_hash
        for seed in (0, 1)
    }
    assert len(hashes) == 1
    runs = plan(
        [
            "experiment=merging_at_scale",
            "model=micro",
            "+experiment/merging_at_scale_method=ties",
            "experts.base_kind=base",
        ],
        multirun=True,
    )
    assert len(runs) == 4 * 3 and len({validate(config).config_hash for _, config in runs}) == 3 * 3 + 1


def test_expert_subsets_are_seeded_and_in_suite_order(micro_zoo):
    from mergelab import zoo

    held_in = zoo.load_suite().held_in_categories
    subsets = [
        tuple(validate(compose(["experts.n_experts=2", f"experts.subset_seed={seed}"])).categories)
        for seed in range(6)
    ]
    assert subsets[0] == tuple(validate(compose(["experts.n_experts=2", "experts.subset_seed=0"])).categories)
    assert len(set(subsets)) > 1
    assert all(list(subset) == sorted(subset, key=held_in.index) for subset in subsets)
    assert validate(compose(["experts.n_experts=8"])).categories == held_in
    chosen = validate(compose(["experts.n_experts=2", f"experts.categories=[{held_in[3]},{held_in[1]}]"]))
    assert chosen.categories == [held_in[1], held_in[3]]


@pytest.mark.parametrize("method", ["breadcrumbs", "della", "tsv", "iso_c"])
def test_the_newer_methods_have_a_validation_grid_of_valid_points(micro_zoo, method):
    """`select=validation` works for them out of the box: the default config gives each a grid, and every
    point of it is a valid setting of the method (validate checks each)."""
    spec = validate(compose(["select=validation", f"merge={method}"]))
    grid = spec.config.select_grid[method]
    assert grid["scale"] and all(value > 0 for value in grid["scale"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=xxl"], "model: 'xxl' is not allowed; allowed: "),
        (["select=valid"], "select: 'valid' is not allowed; allowed: none, validation"),
        (["experts.base_kind=chat"], "experts.base_kind: 'chat' is not allowed; allowed: base, it"),
        (["experts.n_experts=two"], "experts.n_experts: expected int, got 'two'"),
        (["experts.n_experts=9"], "experts.n_experts: 9 is not allowed; allowed: 1..8"),
        (["eval.max_exampels=3"], "unknown key 'eval.max_exampels'; allowed keys: held_in, held_out"),
        (["+eval.max_exampels=3"], "unknown key 'eval.max_exampels'; allowed keys: held_in, held_out"),
        (["merge.density=2"], "merge: method 'ties': density=2"),
        (["merge.sine=sum"], "unknown key 'merge.sine'; allowed keys: method, density, scale"),
        (["+merge.sine=sum"], "merge: unknown hyperparameter(s) ['sine'] for method 'ties'"),
        (["select=validation", "eval=held_out"], "select: 'validation' needs eval.held_in=true"),
        (["select=validation", "merge=fisher"], "select_grid: no grid for method 'fisher'"),
        (["device=gpu"], "device: 'gpu' is not allowed; allowed: auto, cpu, cuda"),
        (["model=t5-base"], "model.arch: 'seq2seq_lm' is evaluated only on the T0 suite (eval=t0)"),
        (["model=pythia-410m", "model.path=null"], "model.path: required for the hub preset 'pythia-410m'"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(micro_zoo, overrides, expected):
    with pytest.raises(ConfigError) as error:
        validate(compose(overrides))
    message = str(error.value)
    assert expected in message and "\n" not in message


def test_mergelab_run_reports_a_bad_value_in_one_line_before_loading_anything(micro_zoo, capsys):
    from mergelab.experiment import runner

    assert runner.main(["-m", "model=micro", "merge=ties,dare", "merge.density=1.5"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mergelab run: error: merge: method") and "density" in error
    assert len(error.splitlines()) == 1


def test_mergelab_run_names_an_unbuilt_zoo_size_before_launching(micro_zoo, capsys):
    from mergelab.experiment import runner

    assert runner.main(["model=l", "logger=none"]) == 2
    error = capsys.readouterr().err.strip()
    assert "zoo size 'l' is not built" in error and "mergelab zoo build size=l" in error
    assert len(error.splitlines()) == 1


def test_hub_preset_takes_local_experts_by_category(micro_zoo, tmp_path):
    overrides = [
        "model=qwen2.5-0.5b",
        f"model.path={tmp_path}/base",
        "experts=paths",
        f"+experts.paths.color={tmp_path}/color",
        f"+experts.paths.food={tmp_path}/food",
    ]
    spec = validate(compose(overrides))
    assert spec.categories == ["color", "food"] and spec.config.model.source == "hub"
    with pytest.raises(ConfigError, match="experts.source: 'zoo' is not allowed with a hub model"):
        validate(compose(["model=qwen2.5-0.5b", "experts=held_in"]))
