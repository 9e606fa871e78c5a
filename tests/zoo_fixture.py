"""Session fixture: the micro zoo size built once into a temporary MERGELAB_HOME."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory):
    """MERGELAB_HOME holding a fully built micro zoo (set in the environment for the session)."""
    home = tmp_path_factory.mktemp("mergelab_home")
    previous = os.environ.get("MERGELAB_HOME")
    os.environ["MERGELAB_HOME"] = str(home)
    from mergelab import zoo

    zoo.build("micro", device="cpu", progress=False)
    yield home
    if previous is None:
        os.environ.pop("MERGELAB_HOME", None)
    else:
        os.environ["MERGELAB_HOME"] = previous


def micro_run_overrides(results_dir, *extra: str) -> list[str]:
    """`mergelab run` overrides for a quick two-expert run on the micro zoo, writing into `results_dir`."""
    return [
        "model=micro",
        "eval.max_examples=8",
        "logger=none",
        "progress=false",
        "device=cpu",
        f"results_dir={results_dir}",
        "study=t",
        "experts.n_experts=2",
        *extra,
    ]
