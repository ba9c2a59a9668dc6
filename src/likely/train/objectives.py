"""What the trainer optimises: the task-specific part of a training run.

An objective builds the model for a feature layout, says which rows of the
training split to batch, turns a batch into a loss, and evaluates a split with
the metric that picks the best epoch. The trainer holds one objective and
never asks which it is, so a new task (two-tower recall, in
`likely.recall.two_tower`) needs no branch in the training loop.

`RankingObjective`, the default, is click-through-rate ranking: binary
cross-entropy on a CTR model's logits, evaluated by AUC, logloss and GAUC.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from likely.config import ExperimentConfig
from likely.data.batches import Batch, SplitArrays
from likely.data.prepare import Prepared
from likely.models.inputs import FeatureLayout
from likely.models.registry import build_model
from likely.train.metrics import evaluate
from likely.train.predict import score_split


class Objective(Protocol):
    """The task of a training run.

    Attributes:
        name: the model's name in logs, checkpoints and `model/model.json`.
        metric: the evaluation key that selects the best epoch; higher is
            better.
    """

    name: str
    metric: str

    def build_model(self, layout: FeatureLayout, *, sparse: bool) -> nn.Module:
        """The model to train, sized for `layout`."""
        ...

    def model_info(self) -> dict[str, Any]:
        """JSON-able description of the model, saved as `model` in model.json."""
        ...

    def train_rows(self, split: SplitArrays) -> np.ndarray | None:
        """Rows of the training split to batch; None for every row."""
        ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Scalar loss of one batch; `model` may be wrapped for DDP."""
        ...

    def evaluate(
        self, model: nn.Module, prepared: Prepared, split: str, device: torch.device
    ) -> dict[str, float]:
        """Metrics of the model on a split of the prepared window."""
        ...


class RankingObjective:
    """Binary cross-entropy on the logits of the config's CTR model.

    Every impression is a training row; AUC on the held-out split picks the
    best epoch.
    """

    metric = "auc"

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.loss_fn = nn.BCEWithLogitsLoss()

    @property
    def name(self) -> str:
        return self.config.model.name

    def build_model(self, layout: FeatureLayout, *, sparse: bool) -> nn.Module:
        return build_model(self.config, layout, sparse=sparse)

    def model_info(self) -> dict[str, Any]:
        return self.config.model.model_dump(mode="json")

    def train_rows(self, split: SplitArrays) -> np.ndarray | None:
        return None

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.sparse, batch.dense, batch.sequence, batch.cross)  # (B,)
        return self.loss_fn(logits, batch.label)

    def evaluate(
        self, model: nn.Module, prepared: Prepared, split: str, device: torch.device
    ) -> dict[str, float]:
        """AUC, logloss, GAUC and calibration on a split."""
        folder = prepared.folder / split
        logits = score_split(model, folder, self.config.train.eval_batch_size)
        arrays = SplitArrays(folder)
        users = np.asarray(arrays.arrays["user"])
        has_users = bool(self.config.data.user_column)
        return evaluate(
            np.asarray(arrays.arrays["label"]),
            logits,
            users if has_users else None,
        )
