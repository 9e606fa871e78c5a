"""mergelab: model merging research framework (TIES, DARE, task arithmetic, Fisher, PLeaS)."""

__version__ = "0.1.0"
