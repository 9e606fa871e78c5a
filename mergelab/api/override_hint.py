"""A hint for Hydra's bare lexer error on unquoted values with characters outside ASCII.

Hydra's override grammar accepts only ASCII in unquoted values, so `base=/m/modèle` fails with
"LexerNoViableAltException: base=/m/modèle ^" and no word on the cause; quoting the value works.
"""

from __future__ import annotations

from collections.abc import Sequence


def quote_hint(message: str, overrides: Sequence[str]) -> str:
    """`message`, plus how to quote the first override with non-ASCII characters when Hydra's lexer failed."""
    if "LexerNoViableAlt" not in message:
        return message
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and not value.isascii():
            example = f'{key}="{value}"' if not value.startswith("[") else f'{key}=["{value[1:-1]}"]'
            return (
                f"{message.split(' See https://')[0]}: unquoted values may hold only ASCII characters; "
                f"quote the value, e.g. '{example}'"
            )
    return message
