"""The error type of run configs, shared by the config, its planning checks and the runner."""

from __future__ import annotations


class ConfigError(ValueError):
    """A composed config that mergelab cannot run; the message is one line naming the key at fault."""
