"""Hostile inputs for the fuzz tests (``tests/fuzz``) and the rule every case must obey.

Hypothesis draws the *parameters* of an input (shape, dtype, kind of values and a
seed), and numpy makes the array from them: drawing thousands of array elements
one by one through hypothesis would be slow, and shrinking the parameters gives
readable counterexamples (``shape=(1, 0, 3), dtype=uint64, kind='huge'``).

The rule (:func:`outcome`): a call either returns, and then the test checks the
result's invariants, or raises one of :data:`CLEAR` with a message that names
what was wrong (an argument or a file). Anything else (IndexError, RuntimeError,
ZeroDivisionError, MemoryError, a message that names nothing) fails the test.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

#: Exceptions a caller can act on; their message must say which argument or file is wrong.
CLEAR = (ValueError, TypeError, KeyError, FileNotFoundError)

#: Settings of every property: modest example counts (the suite runs on 2 cores),
#: no deadline (the first example pays for imports and thread pools), no example
#: database (the run's seed replays a run; see tests/conftest.py).
FUZZ = settings(max_examples=100, deadline=None, database=None)

INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
OTHER_DTYPES = ("bool", "float32", "float64", "complex64")

#: Kinds of label values: ``small`` ids 0..4, ``huge`` ids up to 2**63 - 1 (legal),
#: ``negative`` (illegal), ``zero`` (no object), ``one`` (a single object).
LABEL_KINDS = ("small", "huge", "negative", "zero", "one")


@dataclass(frozen=True)
class Labels:
    """Parameters of a label image; :meth:`make` builds it."""

    shape: tuple
    dtype: str
    kind: str
    seed: int

    def make(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        ids = rng.integers(0, 5, self.shape)
        if self.kind == "zero":
            ids[...] = 0
        elif self.kind == "one":
            ids = (ids > 1).astype(np.int64)
        elif self.kind == "huge":  # five distinct huge ids, INT64_MAX among them
            table = np.array([0, 2 ** 40, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1], dtype=np.int64)
            ids = table[ids]
        elif self.kind == "negative":
            ids = ids - 2
        return cast(ids, self.dtype)


def valid_labels(a: np.ndarray) -> bool:
    """The metrics' contract for a label image: integers (not bool), non-negative, below 2**63."""
    return a.dtype.kind in "iu" and (a.size == 0 or (int(a.min()) >= 0 and int(a.max()) < 2 ** 63))


def cast(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` in ``dtype`` the way a file would hold them (integers wrap around)."""
    if dtype == "bool":
        return values != 0
    if dtype in INT_DTYPES:
        return values.astype(np.int64).astype(dtype)  # wraps, as a careless writer would
    return values.astype(dtype)


def shapes(min_dims: int = 0, max_dims: int = 5, max_side: int = 5, min_side: int = 0):
    """Shapes with ``min_dims..max_dims`` axes of ``min_side..max_side`` (0 = an empty axis)."""
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


@st.composite
def labels(draw, shape=None, dtypes=INT_DTYPES + OTHER_DTYPES, kinds=LABEL_KINDS) -> Labels:
    return Labels(draw(shapes()) if shape is None else shape, draw(st.sampled_from(dtypes)),
                  draw(st.sampled_from(kinds)), draw(st.integers(0, 2 ** 32 - 1)))


#: Kinds of float values: ``normal`` N(0, 1), ``zero``, ``constant``, ``large`` (1e4 scale,
#: finite results expected), ``huge`` (1e30: finite input whose squares overflow float32),
#: ``nan``, ``inf``.
FLOAT_KINDS = ("normal", "zero", "constant", "large", "huge", "nan", "inf")


def floats(shape, kind: str, dtype: str, seed: int) -> np.ndarray:
    """A float (or other ``dtype``) array of ``shape`` with values of ``kind``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if kind == "zero":
        x[...] = 0
    elif kind == "constant":
        x[...] = 0.7
    elif kind == "large":
        x *= 1e4
    elif kind == "huge":
        x *= 1e30
    elif kind in ("nan", "inf") and x.size:
        x.flat[rng.integers(0, x.size)] = np.nan if kind == "nan" else -np.inf
    if dtype == "bool":
        return x > 0
    if dtype.startswith(("int", "uint")):
        return np.nan_to_num(x).clip(-100, 100).astype(dtype)
    if dtype.startswith("float") and kind == "huge":  # huge but finite in every float type
        big = np.finfo(dtype).max / 4
        x = x.clip(-big, big)
    return x.astype(dtype)


def names_any(message: str, names) -> bool:
    return any(str(n) in message for n in names)


def outcome(fn, names, *args, **kwargs):
    """``("ok", result)`` or ``("error", exception)``; fails the test unless ``fn`` returns
    or raises one of :data:`CLEAR` whose message names one of ``names``."""
    try:
        return "ok", fn(*args, **kwargs)
    except CLEAR as err:
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        assert names_any(message, names), f"{type(err).__name__} names none of {list(names)}: {message}"
        return "error", err
