"""The embedded offline model zoo: a synthetic task suite, a tokenizer and a ladder of small Llama models."""

from mergelab.zoo.cache import ZooError, mergelab_home, zoo_home
from mergelab.zoo.ladder import (
    BASE_KINDS,
    LADDER,
    REPLICATES,
    SIZES,
    SizeSpec,
    build,
    model_path,
    tokenizer_path,
)
from mergelab.zoo.suite import TaskSuite, load_suite, load_task
from mergelab.zoo.tasks import TaskSpec

__all__ = [
    "BASE_KINDS",
    "LADDER",
    "REPLICATES",
    "SIZES",
    "SizeSpec",
    "TaskSpec",
    "TaskSuite",
    "ZooError",
    "build",
    "load_suite",
    "load_task",
    "mergelab_home",
    "model_path",
    "tokenizer_path",
    "zoo_home",
]
