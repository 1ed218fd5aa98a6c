"""Typed knobs: frozen dataclasses parsed from flat ``key=value`` settings (``--scheduler-param``).

A knob class names its keys' common prefix in ``PREFIX`` (``qas_``, ``dart_``, ...); its fields, with their
defaults and a comment each, are the one place a knob is documented. The flat key of a field is
``PREFIX + field name``; absent keys keep the default; values are converted to the field's type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Protocol, TypeVar

_CONVERT = {"int": int, "float": float, "bool": bool}


class Knobs(Protocol):
    PREFIX: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, Any]]


K = TypeVar("K", bound=Knobs)


def parse_knobs(cls: type[K], flat: Mapping[str, float]) -> K:
    """Build ``cls`` from the keys of ``flat`` that name its fields (others are ignored here; see
    :func:`unknown_keys`). Raises ValueError from the class's own checks."""
    values = {}
    for f in dataclasses.fields(cls):
        key = cls.PREFIX + f.name
        if key in flat:
            values[f.name] = _CONVERT[str(f.type)](flat[key])
    return cls(**values)


def knob_keys(classes: Iterable[type[Knobs]]) -> frozenset[str]:
    """Every flat key the classes accept."""
    return frozenset(cls.PREFIX + f.name for cls in classes for f in dataclasses.fields(cls))


def unknown_keys(flat: Mapping[str, float], classes: Iterable[type[Knobs]]) -> list[str]:
    """The keys of ``flat`` that no class accepts, sorted."""
    return sorted(set(flat) - knob_keys(classes))
