"""`mergelab run` refuses bad configs while planning, before any job, and never records a non-finite model
(issue 16.2 and 16.5); sweep workers stop when the sweep's process dies (issue 16.3)."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch

from mergelab.engine.finite import NonFiniteError
from mergelab.experiment import results, runner, watchdog
from mergelab.experiment.config import validate
from mergelab.experiment.sweep import compose
from tests.zoo_fixture import micro_run_overrides


def plan_error(capsys, tmp_path, *extra: str) -> str:
    """The error line of a `mergelab run` that planning refuses; nothing may be written under tmp_path."""
    before = sorted(tmp_path.rglob("*"))
    assert runner.main(micro_run_overrides(tmp_path / "results", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mergelab run: error: ") and len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before
    return err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("study=../../x",), "study: '../../x' is not allowed; use a plain name"),
        (("study=",), "study: '' is not allowed"),
        (("study=a/b",), "study: 'a/b' is not allowed"),
        (("eval.max_examples=0",), "eval.max_examples: 0 is not allowed; allowed: >= 1 or null"),
        (("eval.max_examples=-3",), "eval.max_examples: -3 is not allowed"),
        (("merge=average", "merge.weights=[1,2,3]"), "method 'average': weights has 3 entries for 2 experts"),
        (("merge.density=abc",), "method 'ties': density='abc' must be a finite number"),
        (("merge.scale=nan",), "method 'ties': scale=nan must be a finite number"),
        (("experts.categories=[color,color]",), "experts.categories: 'color' is named more than once"),
    ],
)
def test_bad_run_configs_are_refused_while_planning(micro_zoo, tmp_path, capsys, extra, message):
    assert message in plan_error(capsys, tmp_path, *extra)


def test_results_dir_that_is_a_file_is_refused_while_planning(micro_zoo, tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("not a directory")
    assert runner.main(micro_run_overrides(target)) == 2
    assert f"results_dir: '{target}' is not a directory" in capsys.readouterr().err
    assert target.read_text() == "not a directory"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_while_planning(micro_zoo, tmp_path, capsys):
    err = plan_error(capsys, tmp_path, "device=cuda")
    assert "device: device=cuda requested but no CUDA device is available" in err


def test_a_non_finite_merged_model_is_never_recorded(micro_zoo, tmp_path, monkeypatch, capsys):
    merge_and_load = runner.merge_and_load

    def poisoned(*args, **kwargs):
        model, report = merge_and_load(*args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).view(-1)[:3] = math.nan
        return model, report

    monkeypatch.setattr(runner, "merge_and_load", poisoned)
    config = compose(micro_run_overrides(tmp_path))
    spec = validate(config)
    with pytest.raises(NonFiniteError, match=r"the merged model has 3 non-finite value\(s\) in 1 tensor"):
        runner.run_one(config)
    assert runner.main(micro_run_overrides(tmp_path)) == 1  # the job names the error, the sweep counts 0/1
    assert "mergelab run: error: run " in capsys.readouterr().err
    assert not results.fragment_path("t", spec.config_hash, tmp_path).exists()


def test_non_finite_scores_are_never_recorded(micro_zoo, tmp_path, monkeypatch):
    measured = runner.task_outcomes

    def undefined(*args, **kwargs):
        return {task: dataclasses.replace(o, score=math.nan) for task, o in measured(*args, **kwargs).items()}

    monkeypatch.setattr(runner, "task_outcomes", undefined)
    config = compose(micro_run_overrides(tmp_path))
    with pytest.raises(NonFiniteError, match="non-finite score on"):
        runner.run_one(config)
    assert not list(tmp_path.rglob("*.parquet"))


def sweep_workers(parent: psutil.Process, sweep_dir, timeout: float) -> list[psutil.Process]:
    """The loky processes of a running sweep, once a job has started (Hydra made its job directory)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(sweep_dir.glob("hydra/multirun-*/0")):
            return [child for child in parent.children(recursive=True) if "loky" in " ".join(child.cmdline())]
        time.sleep(0.2)
    raise AssertionError("no sweep job started")


@pytest.mark.slow
def test_sweep_workers_die_with_the_killed_parent(micro_zoo, tmp_path):
    env = {**os.environ, "MERGELAB_HOME": str(micro_zoo), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mergelab.cli", "run", "-m", "experiment=micro_smoke", "progress=false"]
    command += ["device=cpu", f"results_dir={tmp_path}", "hydra.launcher.n_jobs=2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = sweep_workers(psutil.Process(process.pid), tmp_path / "micro_smoke", timeout=240)
        assert len(workers) >= 2  # two workers (plus loky's resource tracker)
        process.send_signal(signal.SIGKILL)  # the parent only: its workers must notice by themselves
        process.wait()
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers still running after their parent died: {[p.pid for p in alive]}"
    finally:
        for child in psutil.Process().children(recursive=True):
            child.kill()


def watched_job(pid: int, started: float) -> subprocess.Popen:
    """A Python process that behaves like a job of the sweep process `pid` (started at `started`): it
    starts the watchdog, then idles."""
    env = {**os.environ, watchdog.SWEEP_VARIABLE: f"{socket.gethostname()}:{pid}:{started!r}"}
    code = (
        "import time; from mergelab.experiment import watchdog; watchdog.stop_with_parent(); time.sleep(60)"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def test_a_job_exits_when_its_sweep_process_dies_or_is_already_gone():
    sweep = subprocess.Popen(["sleep", "60"])
    started = psutil.Process(sweep.pid).create_time()
    job = watched_job(sweep.pid, started)
    time.sleep(1.5)
    assert job.poll() is None  # the sweep lives: the job runs
    sweep.kill()  # a zombie until reaped below: the job must not wait for the reaping
    assert job.wait(timeout=20) == watchdog.EXIT_CODE
    sweep.wait()
    late = watched_job(sweep.pid, started)  # the job only starts after its sweep died
    assert late.wait(timeout=20) == watchdog.EXIT_CODE
