"""PLeaS (Nasery et al.): merging experts that need not share a base with permutations and least squares.

`calibration` (the tokens every expert runs on), `activations` (hooks on Llama blocks), `matching`
(activation correlations and linear-assignment permutations), `partial` (width budget: average the
best-matched MLP units, keep the rest side by side), `fit` (layer-wise least squares, closed form or Adam),
`merge` (the whole-model entry point).
"""

from mergelab.pleas.merge import PleasOptions, pleas_merge_directories, pleas_merge_models

__all__ = ["PleasOptions", "pleas_merge_directories", "pleas_merge_models"]
