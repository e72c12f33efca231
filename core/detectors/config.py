"""Detector configuration: plain dataclasses that the CLI (`--set`) and the GUI form share.

Each field may carry metadata: ``help`` (one line), ``choices`` (a tuple of allowed values),
``min`` / ``max`` (numbers), ``zero`` (what a value of 0 means where it is special, such as
``"exact"``: the GUI form shows it instead of the number), ``advanced`` (hidden behind a toggle in
the GUI form), and the
field's contract with a trained model, declared where the field is:

- ``fixed``: baked into the trained weights (a shape, the backbone, the working resolution); it
  cannot be changed on a loaded model (``--set`` on ``scan --model`` refuses it).
- ``neutral``: does not change an image's score (training-only settings, batch sizes, map-only
  settings), so a calibrated threshold still applies after it changes.
- ``map`` (with ``neutral``): changes the heat maps, never a score (a map's blur). A session or a
  resumed scan does not reuse rows whose maps were made under another value of it
  (:func:`core.engine.session_scan.score_settings`), so maps of two blurs are never mixed.
- ``legacy``: the value a model saved before the field existed behaves as (see :meth:`from_dict`);
  give it whenever a new field's default differs from the old behaviour, or may come to.

Every other field may be changed on a trained model and counts as changing the score scale.
``tests/core/test_detectors.py::test_every_field_of_a_trained_model`` changes every field of every
detector's tiny trained model and checks that the marks are true.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value that is not valid; the message names it."""


@dataclass
class DetectorConfig:
    """Fields every detector has."""

    batch_size: int = dataclasses.field(default=16, metadata={"neutral": True, "help": "images per batch", "min": 1,
                                                              "max": 4096})
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed (fit and any random draws)", "min": 0})

    @classmethod
    def marked(cls, mark: str) -> tuple[str, ...]:
        """Names of the fields whose metadata sets ``mark`` (``"fixed"``, ``"neutral"`` or ``"map"``)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get(mark))

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> tuple[DetectorConfig, list[str]]:
        """Build from saved values; returns the config and the keys it did not know.

        A field the saved values lack takes its ``legacy`` metadata value where it has one: what
        models saved before the field existed did (a changed default of a ``fixed`` field must not
        change how an older model's weights are read), else its default."""
        known = {f.name: f for f in fields(cls)}
        data = {**{f.name: f.metadata["legacy"] for f in fields(cls) if "legacy" in f.metadata and f.name not in data},
                **data}
        kwargs, unknown = {}, []
        for key, value in data.items():
            if key not in known:
                unknown.append(key)
                continue
            kwargs[key] = coerce(cls, known[key], value)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg, unknown

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            md = f.metadata
            if "choices" in md and v not in md["choices"]:
                raise ConfigError(f"{f.name}={v!r} is not one of {', '.join(map(str, md['choices']))}")
            if isinstance(v, float) and not math.isfinite(v):  # NaN < min is False: say it here
                raise ConfigError(f"{f.name}={v} is not a finite number")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if "min" in md and v < md["min"]:
                    raise ConfigError(f"{f.name}={v} is below its minimum {md['min']}")
                if "max" in md and v > md["max"]:
                    raise ConfigError(f"{f.name}={v} is above its maximum {md['max']}")

    def has_value(self, key: str, value: Any) -> bool:
        """Whether field ``key`` already holds ``value`` (a string from ``--set`` is coerced
        first); False for an unknown field or a value that does not parse."""
        known = {f.name: f for f in fields(self)}
        if key not in known:
            return False
        try:
            return coerce(type(self), known[key], value) == getattr(self, key)
        except (ConfigError, TypeError, ValueError):
            return False

    def with_overrides(self, overrides: dict[str, Any]) -> DetectorConfig:
        """A copy with ``overrides`` applied; values may be strings (from ``--set``)."""
        known = {f.name: f for f in fields(self)}
        changes = {}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(
                    f"unknown setting '{key}' for this detector (known: {', '.join(sorted(known))})"
                )
            changes[key] = coerce(type(self), known[key], value)
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg


def field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(f.name, f.type)


def _parse_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def coerce(cls: type, f: dataclasses.Field, value: Any) -> Any:
    """Convert ``value`` (often a string) to the field's declared type."""
    tp = field_type(cls, f)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    try:
        if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
            non_none = [a for a in args if a is not type(None)]
            if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
                return None
            for a in non_none:  # first type that accepts it
                try:
                    return _coerce_simple(a, value)
                except (ValueError, TypeError):
                    continue
            raise ValueError(f"cannot read {value!r}")
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            inner = args[0] if args else str
            return tuple(_coerce_simple(inner, x.strip() if isinstance(x, str) else x) for x in items)
        return _coerce_simple(tp, value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad value for '{f.name}': {value!r} ({exc})") from None


def _coerce_simple(tp: Any, value: Any) -> Any:
    if tp is bool:
        return value if isinstance(value, bool) else _parse_bool(str(value))
    if tp is int:
        if isinstance(value, bool):
            raise TypeError("boolean where an integer is expected")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return int(value) if not isinstance(value, str) else int(value.strip())
    if tp is float:
        if isinstance(value, bool):
            raise TypeError("boolean where a number is expected")
        return float(value)
    if tp is str:
        return str(value)
    return value
