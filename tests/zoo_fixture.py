"""Session fixture: the micro zoo size built once into a temporary MERGELAB_HOME."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

# Digest of the micro zoo that produced the committed golden study numbers (results/*_micro/). Training is
# bit-reproducible on one machine and library stack, not across CPUs (other float kernels, other weights).
GOLDEN_MICRO_ZOO = Path(__file__).with_name("golden_micro_zoo.sha256")


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


def micro_zoo_digest(home: Path) -> str:
    """SHA-256 over the weight digests of the micro zoo's init-0, replicate-0 components (those the studies
    merge) under the MERGELAB_HOME `home`; tests that add the second init or expert replicate do not change
    it."""
    import json

    root = Path(home) / "zoo" / "micro"
    digest = hashlib.sha256()
    manifests = [*(root / "base").rglob("manifest.json"), *(root / "it").rglob("manifest.json")]
    for manifest in sorted(path for path in manifests if not path.parent.parent.name.startswith("experts_r")):
        digest.update(json.loads(manifest.read_text())["sha256"].encode())
    return digest.hexdigest()


def require_golden_micro_zoo(home: Path) -> None:
    """Skip a golden-number test where the micro zoo trained here differs from the one the numbers came from."""
    expected = GOLDEN_MICRO_ZOO.read_text().strip()
    actual = micro_zoo_digest(home)
    if actual != expected:
        pytest.skip(
            f"this machine trains a different micro zoo ({actual[:12]} vs golden {expected[:12]}): the golden "
            "numbers do not apply; regenerate them here with the commands in the study READMEs"
        )


def component_weights(path: Path) -> dict:
    """The tensors of one zoo component directory."""
    return load_file(path / "model.safetensors")
