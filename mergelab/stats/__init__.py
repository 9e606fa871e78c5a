"""Per-expert statistics that data-aware methods merge with, computed once and cached on disk.

- `data`: the examples a statistic is computed on (data specs `zoo:<category>` or a datasets directory);
- `encode`: their token ids; `fisher`: diagonal Fisher; `gram`: Gram matrices of linear-layer inputs;
- `cache`: the on-disk cache keyed by checkpoint hash, data, split, n_examples and settings;
- `compute`: `expert_statistics`, which the merge API calls for methods that declare a `statistic`.
"""

from mergelab.stats.cache import StatisticCache, StatisticFile, StatisticKey, checkpoint_digest, stats_home
from mergelab.stats.compute import StatisticRequest, expert_statistic, expert_statistics
from mergelab.stats.data import Example, ExampleSet, StatisticDataError, check_data_specs, load_examples

__all__ = [
    "Example",
    "ExampleSet",
    "StatisticCache",
    "StatisticDataError",
    "StatisticFile",
    "StatisticKey",
    "StatisticRequest",
    "check_data_specs",
    "checkpoint_digest",
    "expert_statistic",
    "expert_statistics",
    "load_examples",
    "stats_home",
]
