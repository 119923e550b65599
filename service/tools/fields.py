"""Argument types shared by several tools."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

_CITY_PUNCTUATION = frozenset(" -'\u2019.,")  # \u2019: typographic apostrophe


def _check_city(value: str) -> str:
    # An allow-list rather than a deny-list: the city ends up in upstream query strings, so
    # anything that is not obviously part of a place name (/ ? # & % \ = control characters,
    # lone surrogates, tabs, ...) is refused before any request is made.
    for char in value:
        category = unicodedata.category(char)
        if category[0] in "LM" or category == "Nd" or char in _CITY_PUNCTUATION:
            continue
        raise ValueError(
            f"contains a character that is not allowed ({char!r}); use letters, digits, "
            "spaces, hyphens, apostrophes, periods and commas only"
        )
    if not any(unicodedata.category(char)[0] == "L" for char in value):
        raise ValueError("must contain at least one letter")
    return value


CityName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(_check_city),
    Field(
        description=(
            "City name, e.g. 'Makati' or 'São Paulo'. Letters, digits, spaces, hyphens, "
            "apostrophes, periods and commas only."
        ),
    ),
]
"""A city name as the model sends it: trimmed, 1 to 100 characters, nothing injectable."""


def _reject_bool(value: object) -> object:
    # Pydantic's lax mode reads true as 1; a boolean capacity is a model mistake, not a number.
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    return value


NOT_BOOL = BeforeValidator(_reject_bool)
"""Put last in `Annotated[int, Field(...), NOT_BOOL]`: "12" and 12.0 still pass, true does not.

Last, so that pydantic can still put `minimum`/`maximum` into the generated schema."""
