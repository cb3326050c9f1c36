"""The ``csv`` data source: features and label from a local CSV file.

The file is read once with pandas' C parser (restricted to the used columns), then checked:
every feature and the label must be numeric and complete. Problems are reported as
:class:`~prodml.core.errors.DataError` naming the file, the column and, where it helps, the
first offending line, so a user can fix the file without a debugger.
"""

from __future__ import annotations

import csv as csvmod
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from prodml import hookimpl
from prodml.core.config import ConfigPath, PluginConfig
from prodml.core.errors import DataError, closest
from prodml.core.interfaces import DataSource
from prodml.core.plugins import Backend

if TYPE_CHECKING:
    import pandas as pd


class CsvSourceConfig(PluginConfig):
    """Read training data from a local CSV file (header row required, comma-separated)."""

    type: Literal["csv"]
    path: ConfigPath = Field(description="CSV file with a header row (relative to the config file)")
    label: str = Field(description="name of the label column")
    features: list[str] | None = Field(
        None,
        description="feature columns, in the order the model receives them "
        "(default: every column except the label and those in `drop`, in file order)",
    )
    drop: list[str] = Field(
        default_factory=list,
        description="columns to ignore when `features` is not given (ids, timestamps, ...)",
    )

    @model_validator(mode="after")
    def _check_columns(self) -> CsvSourceConfig:
        if self.features is not None:
            if not self.features:
                raise ValueError("features is empty; list at least one column or leave it out")
            seen: set[str] = set()
            twice = [f for f in self.features if f in seen or seen.add(f)]  # type: ignore[func-returns-value]
            if twice:
                raise ValueError(f"features lists {twice[0]!r} twice")
            if self.label in self.features:
                raise ValueError(f"the label {self.label!r} is also listed in features; remove it there")
            dropped = sorted(set(self.features) & set(self.drop))
            if dropped:
                raise ValueError(f"{dropped[0]!r} is both in features and in drop; keep one")
        if self.label in self.drop:
            raise ValueError(f"the label {self.label!r} is listed in drop; remove it there")
        return self


def read_header(path: Path) -> list[str]:
    """Column names of the CSV at ``path`` exactly as written (pandas would rename duplicates).

    Raises:
        DataError: the file is missing, unreadable, empty or has duplicate column names.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csvmod.reader(fh), None)
    except FileNotFoundError:
        raise DataError(
            f"csv source: file {path} not found",
            hint="check source.path (relative paths start at the config file's folder)",
        ) from None
    except IsADirectoryError:
        raise DataError(f"csv source: {path} is a directory, not a CSV file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"csv source: cannot read {path}: {exc}") from None
    if not header or all(not name for name in header):
        raise DataError(f"csv source: {path} is empty (no header row)", hint="write a header row, then data")
    names = list(header)
    seen: set[str] = set()
    duplicates = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if duplicates:
        raise DataError(
            f"csv source: {path} has duplicate column names: {', '.join(map(repr, duplicates))}",
            hint="rename the columns so each name appears once",
        )
    return names


def suggest(name: str, choices: Sequence[str]) -> str | None:
    """The choice closest to ``name``, ignoring case first (``Target`` -> ``target``)."""
    by_lower = {c.lower(): c for c in choices}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    guess = closest(name.lower(), list(by_lower))
    return by_lower[guess] if guess else None


def _missing(path: Path, what: str, name: str, columns: Sequence[str]) -> DataError:
    guess = suggest(name, columns)
    shown = ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else "")
    return DataError(
        f"csv source: {what} column {name!r} is not in {path}; columns: {shown}"
        + (f" — did you mean {guess!r}?" if guess else "")
    )


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


class CsvSource(DataSource):
    """Features and label from a local CSV file."""

    config: CsvSourceConfig

    @property
    def label(self) -> str:
        return self.config.label

    @cached_property
    def _columns(self) -> list[str]:
        return read_header(Path(self.config.path))

    @property
    def feature_names(self) -> list[str]:
        path, columns = Path(self.config.path), self._columns
        if self.config.features is not None:
            for name in self.config.features:
                if name not in columns:
                    raise _missing(path, "feature", name, columns)
            return list(self.config.features)
        skip = {self.config.label, *self.config.drop}
        features = [c for c in columns if c not in skip]
        if not features:
            raise DataError(f"csv source: {path} has no feature columns left after the label and drop")
        return features

    def training_frame(self) -> pd.DataFrame:
        import pandas as pd

        path, columns = Path(self.config.path), self._columns
        if self.label not in columns:
            raise _missing(path, "label", self.label, columns)
        unknown_drop = [d for d in self.config.drop if d not in columns]
        if unknown_drop:
            raise _missing(path, "drop", unknown_drop[0], columns)
        features = self.feature_names
        wanted = [*features, self.label]
        try:
            # Only the used columns: less parsing than reading everything and selecting.
            frame = pd.read_csv(path, usecols=wanted, encoding="utf-8-sig")
        except pd.errors.EmptyDataError:
            raise DataError(f"csv source: {path} is empty") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"csv source: cannot parse {path}: {exc}") from None
        if frame.empty:
            raise DataError(f"csv source: {path} has a header but no data rows")
        frame = frame[wanted]
        check_numeric(frame, wanted, f"csv source {path}", line_offset=1)
        return frame


@hookimpl
def prodml_backends() -> list[Backend]:
    return [Backend("source", "csv", CsvSourceConfig, CsvSource, description="local CSV file")]
