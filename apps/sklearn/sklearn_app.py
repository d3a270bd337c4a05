"""A Serve app with a numeric stack: a scikit-learn model trained at start-up on the bundled iris data."""

from typing import Any

import numpy as np
from ray import serve
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from starlette.requests import Request


@serve.deployment
class Iris:
    def __init__(self) -> None:
        data = load_iris()
        self.names = [str(n) for n in data.target_names]
        self.model = LogisticRegression(max_iter=500).fit(data.data, data.target)

    async def __call__(self, request: Request) -> dict[str, Any]:
        if request.method == "POST":
            features = (await request.json())["features"]
        else:
            features = [5.1, 3.5, 1.4, 0.2]
        label = int(self.model.predict(np.asarray([features], dtype=float))[0])
        return {"class": self.names[label]}


app = Iris.bind()
