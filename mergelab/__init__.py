"""mergelab: model merging research framework (TIES, DARE, task arithmetic, Fisher, PLeaS)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def merge(*args: Any, **kwargs: Any) -> Any:
    """Merge checkpoints; see `mergelab.api.merge` (imported lazily to keep `import mergelab` light)."""
    from mergelab.api.merging import merge as merge_checkpoints

    return merge_checkpoints(*args, **kwargs)


def merge_from_yaml(path: Any, out: Any = None, **options: Any) -> Any:
    """Merge as a mergekit YAML configuration says; see `mergelab.api.mergekit_config.merge_from_yaml`."""
    from mergelab.api.mergekit_config import merge_from_yaml as merge_mergekit_config

    return merge_mergekit_config(path, out, **options)
