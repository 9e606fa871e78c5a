"""mergelab: model merging research framework (TIES, DARE, task arithmetic, Fisher, PLeaS)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def merge(*args: Any, **kwargs: Any) -> Any:
    """Merge checkpoints; see `mergelab.api.merge` (imported lazily to keep `import mergelab` light)."""
    from mergelab.api.merging import merge as merge_checkpoints

    return merge_checkpoints(*args, **kwargs)
