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
from prodml.core.errors import DataError
from prodml.core.interfaces import DataSource
from prodml.core.plugins import Backend
from prodml.plugins.sources._checks import check_numeric, suggest

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


def _missing(path: Path, what: str, name: str, columns: Sequence[str]) -> DataError:
    guess = suggest(name, columns)
    shown = ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else "")
    return DataError(
        f"csv source: {what} column {name!r} is not in {path}; columns: {shown}"
        + (f" — did you mean {guess!r}?" if guess else "")
    )


class CsvSource(DataSource):
    """Features and label from a local CSV file."""

    config: CsvSourceConfig

    def preflight(self, *, offline: bool) -> list[str]:
        """The CSV file exists and is readable."""
        from prodml.runner.preflight import missing_file

        problem = missing_file(self.config.path, "the CSV file", field="source.path")
        return [problem] if problem else []

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
            # Only the used columns (less parsing); when that is all of them, the plain call.
            usecols = None if sorted(wanted) == sorted(columns) else wanted
            # (pandas strips a UTF-8 byte-order mark itself; an explicit encoding would be slower)
            frame = pd.read_csv(path, usecols=usecols)
        except pd.errors.EmptyDataError:
            raise DataError(f"csv source: {path} is empty") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"csv source: cannot parse {path}: {exc}") from None
        if frame.empty:
            raise DataError(f"csv source: {path} has a header but no data rows")
        if list(frame.columns) != wanted:  # a reordering copies every column: only when needed
            frame = frame[wanted]
        check_numeric(frame, wanted, f"csv source {path}", line_offset=1)
        return frame


@hookimpl
def prodml_backends() -> list[Backend]:
    return [Backend("source", "csv", CsvSourceConfig, CsvSource, description="local CSV file")]
