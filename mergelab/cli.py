"""The `mergelab` command: dispatches `mergelab SUBCOMMAND [hydra overrides...]` to its module."""

from __future__ import annotations

import importlib
import sys
import warnings

from mergelab.methods.errors import MergeWarning

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "merge": ("mergelab.api.cli", "merge a base and experts into a checkpoint"),
    "zoo": ("mergelab.zoo.cli", "build or list the embedded offline model zoo"),
    "run": ("mergelab.experiment.runner", "merge and evaluate one config or a sweep (-m)"),
    "eval": (
        "mergelab.experiment.checkpoint_eval",
        "score a checkpoint on suite or lm-evaluation-harness tasks",
    ),
    "report": ("mergelab.experiment.report", "gather a study's results into tables and figures"),
    "demo": ("mergelab.experiment.demo", "the default job of `make run`"),
}


def usage() -> str:
    lines = ["usage: mergelab SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:<8} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    lines += ["", "`mergelab SUBCOMMAND --help` shows each one's options."]
    return "\n".join(lines)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """mergelab's own warnings as one line `mergelab: warning: ...`; others as Python formats them."""
    if issubclass(category, MergeWarning):
        return f"mergelab: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; each subcommand module exposes `main(argv: list[str]) -> int`."""
    warnings.formatwarning = _format_warning
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"mergelab: unknown subcommand '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
