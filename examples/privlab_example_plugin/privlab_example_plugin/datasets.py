"""scikit-learn's two interleaving half-moons as a privlab data set (`data.name = "two_moons"`).

A loader is a function (params, *, test_fraction, seed) -> privlab.data.Dataset that validates
its own params and raises privlab's ScenarioError naming `data.params.<field>` on bad input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split

from privlab.data import Dataset
from privlab.errors import ScenarioError


class MoonsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_samples: int = Field(default=600, ge=10)
    noise: float = Field(default=0.25, ge=0)


def load_two_moons(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """Two interleaving half-moons (2 features, 2 classes), with Gaussian noise."""
    try:
        p = MoonsParams.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(s) for s in err["loc"])
        raise ScenarioError(f"data.params.{field}: {err['msg']}") from None
    x, y = make_moons(n_samples=p.n_samples, noise=p.noise, random_state=seed % 2**32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed % 2**32, stratify=y
    )
    return Dataset(
        name="two_moons",
        x_train=x_tr.astype(np.float32),
        y_train=y_tr.astype(np.int64),
        x_test=x_te.astype(np.float32),
        y_test=y_te.astype(np.int64),
        input_shape=(2,),
        num_classes=2,
        kind="tabular",
    )
