"""Metadata filters, one meaning for every backend.

    {"orientation": "landscape"}              equals
    {"photographer_username": ["a", "b"]}     any of
    {"width": {"gte": 1000, "lt": 4000}}      range (gt, gte, lt, lte)

Conditions on different fields must all hold. The embedded backend evaluates them with numpy;
the OpenSearch backend turns them into a bool filter inside the k-NN query.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from clipsearch.errors import InvalidInput

RANGE_OPS = ("gt", "gte", "lt", "lte")
MAX_VALUES = 100
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
Scalar = (str, int, float, bool)


@dataclass(frozen=True)
class Condition:
    field: str
    values: tuple | None = None  # any of
    ranges: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Filters:
    """A filters object validated into conditions, all of which must hold. A backend given one
    takes it as it is: a request's filters are parsed once, at the edge."""

    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def __iter__(self) -> Iterator[Condition]:
        return iter(self.conditions)

    def __len__(self) -> int:
        return len(self.conditions)


def parse_filters(filters: Any) -> Filters:
    """Validate a filters object into conditions; InvalidInput says what to fix."""
    if isinstance(filters, Filters):
        return filters
    if filters is None:
        return Filters()
    if not isinstance(filters, dict):
        raise InvalidInput(f"filters must be an object mapping field to value, got {type(filters).__name__}")
    conds = []
    for name, spec in filters.items():
        if not isinstance(name, str) or not _FIELD.match(name):
            raise InvalidInput(f"filter field {show(name)} is not a valid field name")
        conds.append(_parse_one(name, spec))
    return Filters(tuple(conds))


def show(value: Any, limit: int = 60) -> str:
    """`value` for an error message: repr (lone surrogates escaped), cut short; never raises.

    A JSON number has no size limit and Python refuses to print an int of more than 4,300
    digits, so such an int is described rather than printed.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    text = repr(value) if not isinstance(value, (dict, list, tuple)) else _container(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _container(value: Any) -> str:
    try:
        return repr(value)
    except ValueError:  # a huge int inside
        return f"{type(value).__name__} of {len(value)} items"


def _finite(v: Any) -> float | None:
    """A JSON number (not a boolean) as a finite float, or None: a 401-digit integer overflows float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _check_scalar(name: str, v: Any) -> Any:
    if not isinstance(v, Scalar):
        raise InvalidInput(f"filter {name!r}: values must be strings, numbers or booleans, got {type(v).__name__}")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) is None:
        raise InvalidInput(f"filter {name!r}: numbers must be finite and within a double's range, got {show(v)}")
    if isinstance(v, str):
        if len(v) > 256:
            raise InvalidInput(f"filter {name!r}: values are limited to 256 characters")
        if not _is_unicode(v):
            raise InvalidInput(f"filter {name!r}: {show(v)} is not valid Unicode text (it holds a lone surrogate)")
    return v


def _is_unicode(text: str) -> bool:
    # A JSON "\ud800" escape decodes to a lone surrogate, which no UTF-8 encoder (the runtime's,
    # OpenSearch's client) accepts and no stored value can equal.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_one(name: str, spec: Any) -> Condition:
    if isinstance(spec, dict):
        unknown = set(spec) - set(RANGE_OPS)
        if unknown or not spec:
            got = ", ".join(sorted(show(k, 20) for k in spec)[:5]) if spec else "nothing"
            raise InvalidInput(f"filter {name!r}: a range takes gt, gte, lt or lte, got {got}")
        ranges = []
        for op in RANGE_OPS:
            if op in spec:
                v = _finite(spec[op])
                if v is None:
                    raise InvalidInput(f"filter {name!r}: {op} needs a finite number, got {show(spec[op])}")
                ranges.append((op, v))
        return Condition(name, ranges=tuple(ranges))
    if isinstance(spec, list):
        if not spec or len(spec) > MAX_VALUES:
            raise InvalidInput(f"filter {name!r}: a list needs 1 to {MAX_VALUES} values")
        return Condition(name, values=tuple(_check_scalar(name, v) for v in spec))
    return Condition(name, values=(_check_scalar(name, spec),))


def _column_matches(column: np.ndarray, cond: Condition) -> np.ndarray:
    nums = None
    if cond.values is None or any(_is_num(v) for v in cond.values):
        nums = np.fromiter((_as_num(c) for c in column), np.float64, len(column))
    if cond.values is not None:
        mask = np.zeros(len(column), dtype=bool)
        for v in cond.values:
            if isinstance(v, str):
                mask |= column == v
            elif isinstance(v, bool):  # True must not match 1
                mask |= np.fromiter((c is v for c in column), bool, len(column))
            else:
                mask |= nums == float(v)
        return mask
    mask = ~np.isnan(nums)
    for op, v in cond.ranges:
        mask &= {"gt": nums > v, "gte": nums >= v, "lt": nums < v, "lte": nums <= v}[op]
    return mask


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_num(c: Any) -> float:
    if _is_num(c):
        return float(c)
    return math.nan


def filter_mask(metadata: list[dict], conds: Filters, columns: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """A boolean mask over `metadata` rows matching every condition."""
    mask = np.ones(len(metadata), dtype=bool)
    for cond in conds:
        column = columns.get(cond.field) if columns is not None else None
        if column is None:
            column = np.empty(len(metadata), dtype=object)
            column[:] = [m.get(cond.field) for m in metadata]
            if columns is not None:
                columns[cond.field] = column
        mask &= _column_matches(column, cond)
    return mask
