"""The ``hello`` source: ``rows`` rows of y = 2*x1 - x2, generated, no file needed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prodml.plugin import Backend, DataSource, PluginConfig, hookimpl


class HelloSourceConfig(PluginConfig):
    """A generated toy frame."""

    type: Literal["hello"]
    rows: int = Field(8, gt=0, description="number of rows to generate")


class HelloSource(DataSource):
    """Generated rows of y = 2*x1 - x2."""

    config: HelloSourceConfig

    @property
    def label(self) -> str:
        return "y"

    @property
    def feature_names(self) -> list[str]:
        return ["x1", "x2"]

    def training_frame(self):
        import pandas as pd

        n = self.config.rows
        x1 = [float(i) for i in range(n)]
        x2 = [float(i % 3) for i in range(n)]
        return pd.DataFrame({"x1": x1, "x2": x2, "y": [2 * a - b for a, b in zip(x1, x2, strict=True)]})


@hookimpl
def prodml_backends() -> list[Backend]:
    return [Backend("source", "hello", HelloSourceConfig, HelloSource, description="generated toy rows")]
