"""A real distributed sweep: the 4-run micro sweep through Hydra's Ray launcher (a local Ray instance on
loopback with 2 CPUs) and through submitit's local executor (the stand-in for SLURM), each run landing
exactly once in the results store."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mergelab.experiment import results, runner
from mergelab.experiment.config import validate

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# hydra-ray-launcher 1.2.2 needs cloudpickle < 3 and joblib >= 1.6 needs cloudpickle >= 3, so the launchers
# may live in their own environment beside the project's (see the README's "Sweeps on a cluster").
LAUNCHER_ENV_PYTHON = REPO / ".venv-ray" / "bin" / "python"


def python_with(module: str) -> str | None:
    """This interpreter when it imports `module`, else the launcher environment's when it does, else None."""
    if importlib.util.find_spec(module.split(".")[0]) and importlib.util.find_spec(module):
        return sys.executable
    if LAUNCHER_ENV_PYTHON.exists():
        probe = subprocess.run([str(LAUNCHER_ENV_PYTHON), "-c", f"import {module}"], capture_output=True)
        if probe.returncode == 0:
            return str(LAUNCHER_ENV_PYTHON)
    return None


def run_micro_sweep(python: str, launcher: list[str], results_dir: Path, home: Path) -> str:
    """`mergelab run -m experiment=micro_smoke` with `launcher` overrides; its stdout."""
    env = {
        **os.environ,
        "MERGELAB_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    command = [python, "-m", "mergelab.cli", "run", "-m", "experiment=micro_smoke", *launcher]
    command += ["progress=false", "device=cpu", f"results_dir={results_dir}"]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout


def assert_every_run_once(results_dir: Path, stdout: str) -> None:
    assert "4/4 runs have results" in stdout
    table = results.load("micro_smoke", results_dir)
    planned = {
        validate(config).config_hash
        for _, config in runner.plan(["experiment=micro_smoke", f"results_dir={results_dir}"], multirun=True)
    }
    assert set(table["config_hash"]) == planned and len(planned) == 4
    assert not table.duplicated(["config_hash", "task", "metric"]).any()
    assert len(list((results_dir / "micro_smoke" / "fragments").glob("[!.]*.parquet"))) == 4


def test_micro_sweep_on_a_local_ray_cluster(micro_zoo, tmp_path):
    python = python_with("hydra_plugins.hydra_ray_launcher")
    if python is None:
        pytest.skip("needs the ray extra (ray, hydra-ray-launcher) here or in .venv-ray")
    launcher = [
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "+hydra.launcher.ray.init._node_ip_address=127.0.0.1",  # loopback only
    ]
    stdout = run_micro_sweep(python, launcher, tmp_path, micro_zoo)
    assert_every_run_once(tmp_path, stdout)


def test_micro_sweep_through_submitit_local_jobs(micro_zoo, tmp_path):
    python = python_with("hydra_plugins.hydra_submitit_launcher")
    if python is None:
        pytest.skip("needs the slurm extra (hydra-submitit-launcher) here or in .venv-ray")
    stdout = run_micro_sweep(python, ["hydra/launcher=submitit_local"], tmp_path, micro_zoo)
    assert_every_run_once(tmp_path, stdout)
    jobs = list((tmp_path / "micro_smoke").rglob(".submitit/*/*_result.pkl"))
    assert len(jobs) == 4  # one submitit job per run


def test_slurm_launcher_config_matches_the_installed_plugins_schema():
    """With the plugin installed Hydra validates conf/hydra/launcher/submitit_slurm.yaml against its schema
    (a key the plugin lacks fails every composition that picks the launcher)."""
    python = python_with("hydra_plugins.hydra_submitit_launcher")
    if python is None:
        pytest.skip("needs the slurm extra (hydra-submitit-launcher) here or in .venv-ray")
    code = (
        "from mergelab.experiment.sweep import compose; "
        "print(compose(['hydra/launcher=submitit_slurm'], with_hydra=True).hydra.launcher.partition)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    finished = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert finished.returncode == 0 and finished.stdout.strip() == "None", finished.stderr[-2000:]
