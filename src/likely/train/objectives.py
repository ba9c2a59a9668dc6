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

import logging
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from likely.config import ExperimentConfig
from likely.data.batches import Batch, SplitArrays
from likely.data.prepare import Prepared
from likely.models.inputs import FeatureLayout
from likely.models.registry import build_model
from likely.train.metrics import evaluate, platt_scaling
from likely.train.predict import score_split

logger = logging.getLogger(__name__)


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

    def calibrate(self, model: nn.Module, prepared: Prepared) -> dict[str, float]:
        """Fit what the model's scores need after training (on held-out rows);
        what was fitted, empty for nothing."""
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

    def calibrate(self, model: nn.Module, prepared: Prepared) -> dict[str, float]:
        """Platt scaling of the logits on the validation split (see
        `train.calibrate`); nothing without that split, so a model continued
        from a calibrated run (`init_from`) keeps that run's scale and bias."""
        if not self.config.train.calibrate or "valid" not in prepared.splits:
            scale, bias = float(model.logit_scale), float(model.logit_bias)
            if (scale, bias) != (1.0, 0.0):
                logger.info(
                    "no validation split to calibrate on: kept the scale %.4f "
                    "and bias %.4f of the run this one continues",
                    scale,
                    bias,
                )
            return {}
        folder = prepared.folder / "valid"
        model.set_calibration(1.0, 0.0)
        logits = score_split(model, folder, self.config.train.eval_batch_size)
        labels = np.asarray(SplitArrays(folder).arrays["label"])
        if labels.min() == labels.max():
            logger.warning("calibration skipped: the validation labels are all one")
            return {}
        scale, bias = platt_scaling(labels, logits)
        if not scale > 0:
            # A non-positive scale would reverse the ranking: the model is no
            # better than chance on these rows, and is left as it is.
            logger.warning("calibration skipped: fitted scale %.4f", scale)
            return {}
        model.set_calibration(scale, bias)
        logger.info("calibrated logits on valid: scale %.4f, bias %.4f", scale, bias)
        return {"scale": scale, "bias": bias}

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
