"""Training configs as dataclasses read from YAML files and `--set key=value` overrides.

One loader for `train_gst` and `train_tokenizer`: unknown keys are an error, and every value is
checked against its field's annotation, so `--set batch_size=eight` is refused by name before
anything runs. YAML 1.1 reads `5e-4` (no dot) as a string: a float field takes it as a number, an
int field takes `1e4` when it is a whole number. A str field takes a number as text (a path
named `2024`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml


def _as_int(value):
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    number = float(value)          # a float or a string such as "1e4"
    if not number.is_integer():
        raise ValueError
    return int(number)


def _as_float(value):
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _as_bool(value):
    if not isinstance(value, bool):
        raise ValueError
    return value


def _as_str(value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError
    return str(value)


def _of(kind):
    def check(value):
        if not isinstance(value, kind):
            raise ValueError
        return value
    return check


# annotation (as a string: the modules use `from __future__ import annotations`) -> (check, wanted)
_CHECKS = {"int": (_as_int, "an integer"), "float": (_as_float, "a number"),
           "bool": (_as_bool, "true or false"), "str": (_as_str, "a string"),
           "dict": (_of(dict), "a mapping"), "list": (_of((list, tuple)), "a list")}


def check_field_types(cfg, what: str) -> None:
    """Check (and where harmless convert) every field of the dataclass instance `cfg` against its
    annotation: int, float, bool, str, dict, list, and tuple[...] of those (a list or tuple of
    that length, each item checked), each optionally `| None`. A field that is not optional and
    is given None (a key left blank in a YAML file) takes its default. ValueError naming `what`,
    the field, what it must be and the value given. Fields with other annotations are left to
    the config's own checks."""
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), str(f.type).replace(" ", "")
        optional = kind.endswith("|None")
        kind = kind[: -len("|None")] if optional else kind
        if value is None:
            if optional:
                continue
            if f.default is not dataclasses.MISSING:
                setattr(cfg, f.name, f.default)
                continue
            if f.default_factory is not dataclasses.MISSING:
                setattr(cfg, f.name, f.default_factory())
                continue
        if kind.startswith("tuple[") and kind.endswith("]"):
            items = kind[len("tuple["):-1].split(",")
            if not all(t in _CHECKS for t in items):
                continue
            wanted = f"a list of {len(items)} ({', '.join(_CHECKS[t][1] for t in items)})"
            try:
                if not isinstance(value, (list, tuple)) or len(value) != len(items):
                    raise ValueError
                setattr(cfg, f.name, tuple(_CHECKS[t][0](v) for t, v in zip(items, value)))
            except (TypeError, ValueError):
                raise ValueError(f"{what}: {f.name} must be {wanted}, got {value!r}") from None
            continue
        if kind not in _CHECKS:
            continue
        check, wanted = _CHECKS[kind]
        try:
            setattr(cfg, f.name, check(value))
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {f.name} must be {wanted}, got {value!r}") from None


def load_dataclass_config(cls, path=None, overrides: dict | None = None, what: str = "config"):
    """An instance of the dataclass `cls` from a YAML mapping file (optional), then `overrides`
    (None values ignored). ValueError for a file that is not a mapping and for unknown keys."""
    fields = {}
    if path:
        fields = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: expected a mapping of {what} fields")
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} fields {unknown}")
    return cls(**fields)
