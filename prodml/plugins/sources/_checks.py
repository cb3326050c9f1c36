"""Checks shared by the data sources: numeric, complete columns and helpful name suggestions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prodml.core.errors import DataError, closest

if TYPE_CHECKING:
    import pandas as pd


def suggest(name: str, choices: Sequence[str]) -> str | None:
    """The choice closest to ``name``, ignoring case first (``Target`` -> ``target``)."""
    by_lower = {c.lower(): c for c in choices}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    guess = closest(name.lower(), list(by_lower))
    return by_lower[guess] if guess else None


def check_numeric(frame: pd.DataFrame, columns: Sequence[str], where: str, *, line_offset: int = 0) -> None:
    """Raise :class:`DataError` if a column holds non-numeric values or NaNs.

    ``where`` names the data in the message (a file path, ``feast historical features``).
    Messages point at the first bad row: ``row N`` counting from 1, or ``line N`` of a file
    when ``line_offset`` (the number of lines before the first data row) is given.
    """

    def at(position: int) -> str:
        return f"line {position + 1 + line_offset}" if line_offset else f"row {position + 1}"

    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    for name in columns:
        series = frame[name]
        if is_numeric_dtype(series) or is_bool_dtype(series):
            continue
        coerced = pd.to_numeric(series, errors="coerce")
        bad = coerced.isna() & series.notna()
        count = int(bad.sum())
        first = int(bad.to_numpy().argmax()) if count else 0
        value = series.iloc[first] if count else series.dtype
        raise DataError(
            f"{where}: column {name!r} is not numeric: {count} row(s) hold text, "
            f"first at {at(first)}: {value!r}",
            hint="features and label must be numbers; encode categories as numbers or drop the column",
        )
    # the common case (no NaN) costs one pass over the float columns, without a copy
    if not any(frame[name].hasnans for name in columns):
        return
    nan = frame[list(columns)].isna()
    per_column = nan.sum()
    if int(per_column.sum()):
        rows = int(nan.any(axis=1).sum())
        first = int(nan.any(axis=1).to_numpy().argmax())
        detail = ", ".join(f"{c} ({int(n)})" for c, n in per_column.items() if n)
        raise DataError(
            f"{where}: {rows} row(s) have missing values (NaN), first at {at(first)}; "
            f"columns with NaNs: {detail}",
            hint="fill or remove those rows before training",
        )
