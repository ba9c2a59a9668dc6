"""One training loop for every model of the zoo.

The trainer knows nothing about any particular model: it builds one from the
config, feeds it batches of a prepared window, minimises binary cross-entropy
on its logits, evaluates AUC, logloss and GAUC, and writes a run folder that
holds everything needed to score new logs with exactly this preprocessing:

    run/
      config.json  manifest.json  encoders.json   what was trained, on what
      metrics.jsonl                               step losses and evaluations
      checkpoints/step-<n>/                       resumable state (latest two)
      model/model.safetensors  model/model.json   the trained model

Embedding tables and the dense part get different optimizers: an embedding
row is touched only by the batches that hold its id, so SparseAdam (or
row-wise sparse Adagrad) updates just those rows, while dense Adam would
decay and move every row of every table at every step. That choice is the
`train.embedding_optimizer` setting; `adam` gives the dense behaviour the
common peers have.

Why SparseAdam is the default, measured on 2026-12-04 on 2 CPU cores: a DeepFM
step (batch 4096, 8 fields, MLP 400x3) with a 4M-row table took 678 ms with
dense Adam, 89 ms with SparseAdam and 66 ms with sparse Adagrad (at 100k rows:
73, 85 and 74 ms). On the synthetic window (`wide_resnet`, one epoch) SparseAdam
at the dense learning rate reached test AUC 0.7554 with calibration 0.96;
Adagrad needed its own, larger rate (0.05: AUC 0.7571, calibration 0.86; at
0.001: 0.7272). SparseAdam needs no second rate to tune and stays calibrated,
for about a third more time per step than Adagrad at very large vocabularies.

Where a DeepFM step's time goes on a CPU (26 fields, batch 4096, MLP 400x3,
one thread, CPU time, torch.profiler; 2026-12-04, a shared 2-core AMD EPYC
with AVX512-BF16, so take the figures as +-10%). At first: 191 ms a step in
fp32 against 132 ms for the MLP alone; the MLP's matmuls took 146 ms,
SparseAdam 24 ms (mostly sorting and summing the 106k uncoalesced gradient
rows of two tables, then sparse-tensor arithmetic), the FM term 5 ms, and an
identity reordering of the fields with its backward 2 ms. Gradients that come
coalesced (`CoalescedEmbedding`), the update done row-wise (`RowSparseAdam`,
3x faster than SparseAdam's step) and skipping the identity copies brought
the optimizer and lookups to about 13 ms together. Then: fp32 175 ms against
125 ms for the MLP alone (71%); bf16 96 ms against 59 ms (62%), the fastest
setting by 1.8x at the same AUC, so `precision: auto` picks bf16 where the CPU
has bf16 instructions. What is left besides the matmuls, a few ms each: the
lookups and their unique sort, the optimizer's gathers and scatters, the FM
term, autocast's casts and the concatenation of the MLP's input.
`train.compile` of the MLP gave nothing at this size (112 ms against 104 ms a
bf16 step, 193 against 196 in fp32: matmuls dominate, there is little to
fuse) and costs 20-40 s of compiling per run, so it is off by default.

At 2 threads, as `benchmarks/train_speed.py` trains (2026-12-04): 80 ms a
bf16 step against 37 ms for the MLP alone. The matmuls take 40 ms, one GEMM
more than the bound (the gradient of the MLP's input, which the embeddings
need) and about 20% slower per GEMM beside the tables; the rest is the
embedding backward's scatter-adds (4 ms), RowSparseAdam (4 ms), the lookups'
sort and gathers (3 ms), the FM term (3 ms), and casts and elementwise
layers. Those are the CPU's costs: on a GPU the same elementwise work is
cheap and the step is its matmuls.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from likely.config import ExperimentConfig
from likely.data.batches import BatchIterator, SplitArrays
from likely.data.prepare import ENCODERS, MANIFEST, Prepared, PrepareError
from likely.models.inputs import FeatureLayout
from likely.models.registry import count_parameters
from likely.train.checkpoint import (
    CheckpointError,
    atomic_write_json,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from likely.train.distributed import barrier, current_world, join
from likely.train.objectives import Objective, RankingObjective
from likely.train.penalty import EmbeddingPenalty
from likely.train.sparse_adam import RowSparseAdam

if TYPE_CHECKING:
    from likely.models.inputs import RowMap
    from likely.train.predict import LoadedRun

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
# Called after each step with (epoch, step_in_epoch, steps_in_epoch, loss).
StepCallback = Callable[[int, int, int, float], None]


def pick_precision(name: str, device: torch.device) -> str:
    """`train.precision` made concrete: `auto` is bf16 where it is fast.

    On a CPU, bf16 autocast pays only with bf16 dot-product instructions
    (AVX512-BF16 or AMX): there the MLP ran 2.3x faster than in fp32, while
    elsewhere oneDNN emulates bf16 and is slower than fp32. On CUDA, `auto`
    takes bf16 where the GPU supports it; that choice was not measured here.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        fast = capabilities.get("avx512_bf16") or capabilities.get("amx_bf16")
        return "bf16" if fast else "fp32"
    return "fp32"


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cuda` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is present")
    return torch.device(name)


def _embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]


def _carried(
    value: Any, old: nn.Parameter, new: nn.Parameter, name: str, row_map: RowMap
) -> Any:
    """One entry of the optimizer state of parameter `name`, from `old` to
    `new`: tensors that mirror the parameter (moments, sums) move row by row
    as its weights did, zeros for new rows; the rest (the step count, kept
    where the optimizer keeps it) is copied as it is."""
    if not torch.is_tensor(value):
        return value
    if value.dim() == 0 or value.shape != old.shape:
        return value.clone()
    grown = torch.zeros_like(new)
    row_map.place(name, value, grown)
    return grown


def build_optimizers(
    model: nn.Module, config: ExperimentConfig
) -> dict[str, torch.optim.Optimizer]:
    """Adam(W) for the dense part; the configured optimizer for embedding rows."""
    train = config.train
    embeddings = _embedding_parameters(model)
    embedding_ids = {id(p) for p in embeddings}
    dense = [p for p in model.parameters() if id(p) not in embedding_ids]
    rate = train.embedding_learning_rate or train.learning_rate
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if dense:
        # Weight decay applies to dense weights only: decaying an embedding row
        # that a batch did not touch would shrink rare ids towards zero.
        optimizers["dense"] = torch.optim.AdamW(
            dense, lr=train.learning_rate, weight_decay=train.weight_decay
        )
    if embeddings:
        if train.embedding_optimizer == "sparse_adam":
            optimizers["embedding"] = RowSparseAdam(embeddings, lr=rate)
        elif train.embedding_optimizer == "adagrad":
            optimizers["embedding"] = torch.optim.Adagrad(embeddings, lr=rate)
        else:
            optimizers["embedding"] = torch.optim.Adam(embeddings, lr=rate)
    return optimizers


def compile_dense_parts(model: nn.Module) -> list[str]:
    """`torch.compile` every direct part of `model` with parameters but no table.

    Embedding lookups and their sparse gradients stay eager: inductor does not
    generate code for sparse tensors, and the lookups are gathers with nothing
    to fuse. Compiling in place keeps parameter names, so checkpoints of a
    compiled run load into a plain model. Returns the compiled parts' names.
    """
    compiled = []
    for name, part in model.named_children():
        has_table = any(isinstance(m, nn.Embedding) for m in part.modules())
        if not has_table and any(True for _ in part.parameters()):
            part.compile()
            compiled.append(name)
    logger.info("compiled parts: %s", ", ".join(compiled) or "none")
    return compiled


def learning_rate_factor(config: ExperimentConfig, step: int, total: int) -> float:
    """Multiplier of the base learning rate at a global step (0-based)."""
    train = config.train
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.schedule == "constant" or total <= train.warmup_steps:
        return 1.0
    progress = (step - train.warmup_steps) / max(total - train.warmup_steps, 1)
    progress = min(max(progress, 0.0), 1.0)
    if train.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    # The best value of the objective's selection metric (AUC for ranking).
    best_auc: float = -1.0
    best_epoch: int = -1
    epochs_without_gain: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, dict[str, float]]  # split -> metric -> value
    best_epoch: int
    parameters: int
    seconds: float
    samples_per_second: float


class Trainer:
    """Train the configured model on a prepared window.

    Args:
        config: the experiment config (model and train sections included).
        prepared: the prepared window (`likely.data.prepare.prepare`).
        run_dir: the run folder to create, or to resume from.
        resume: continue from the latest checkpoint in `run_dir`.
        on_step: optional progress callback, for the command line's bar.
        init_from: a finished run to continue from: its weights are copied in,
            with embedding tables grown to the window's extended vocabularies
            (prepare the window with `extend=` that run's encoders). The
            optimizers continue from that run's latest checkpoint (see
            `_continue_optimizers`). Ranking runs only.
        objective: what to train; default ranking with the config's model
            (`likely.train.objectives`).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        prepared: Prepared,
        run_dir: Path,
        *,
        resume: bool = False,
        on_step: StepCallback | None = None,
        init_from: Path | None = None,
        objective: Objective | None = None,
    ):
        self.config, self.prepared = config, prepared
        self.objective = objective or RankingObjective(config)
        self.run_dir = Path(run_dir)
        self.on_step = on_step
        train = config.train
        if train.threads:
            torch.set_num_threads(train.threads)
        self.world = current_world()
        self.device = pick_device(train.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        join(self.world, self.device)
        self.precision = pick_precision(train.precision, self.device)
        manifest = prepared.manifest
        self.layout = FeatureLayout.from_config(
            config, manifest["vocab_sizes"], manifest["cross_sizes"]
        )
        torch.manual_seed(config.seed)
        sparse = train.embedding_optimizer != "adam"
        self.model = self.objective.build_model(self.layout, sparse=sparse).to(
            self.device
        )
        self.init_from = init_from
        grown = self._grow_from(init_from) if init_from is not None else None
        if train.compile:
            compile_dense_parts(self.model)
        # DistributedDataParallel averages gradients across ranks; the plain
        # model stays `self.model` for evaluation and saving.
        self.forward_model: nn.Module = self.model
        if self.world.distributed:
            self.forward_model = DistributedDataParallel(self.model)
        self.optimizers = build_optimizers(self.model, config)
        if grown is not None:
            self._continue_optimizers(*grown)
        self.embedding_penalty = EmbeddingPenalty(self.model, train.embedding_l2)
        self.base_rates = {
            name: [g["lr"] for g in opt.param_groups]
            for name, opt in self.optimizers.items()
        }
        self.train_split = SplitArrays(prepared.folder / "train")
        if len(self.train_split) < 2:
            raise PrepareError(
                f"the training split of {prepared.folder} has "
                f"{len(self.train_split)} row(s); training needs at least 2"
            )
        self.batches = BatchIterator(
            self.train_split,
            train.batch_size,
            shuffle=True,
            seed=config.seed,
            drop_last=False,
            rank=self.world.rank,
            world_size=self.world.size,
            rows=self.objective.train_rows(self.train_split),
        )
        self.state = TrainState()
        if resume:
            self._resume()
        elif self.world.is_main:
            self._start_run_dir()
        barrier(self.world)

    # ------------------------------------------------------------------ set-up

    def _start_run_dir(self) -> None:
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise FileExistsError(
                f"run folder {self.run_dir} is not empty; pick another or resume it"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.run_dir / "config.json", self.config.model_dump(mode="json")
        )
        atomic_write_json(self.run_dir / MANIFEST, self.prepared.manifest)
        if self.init_from is not None:
            atomic_write_json(
                self.run_dir / "init_from.json", {"run": str(self.init_from)}
            )
        shutil.copyfile(self.prepared.folder / ENCODERS, self.run_dir / ENCODERS)
        logger.info(
            "run %s: model %s, %s parameters, device %s, precision %s",
            self.run_dir,
            self.objective.name,
            f"{count_parameters(self.model):,}",
            self.device,
            self.precision,
        )

    def _grow_from(self, run_dir: Path) -> tuple[LoadedRun, RowMap]:
        """Copy a finished run's weights in; that run, and where its rows went."""
        from likely.models.inputs import grow_into
        from likely.train.predict import load_run

        previous = load_run(run_dir)
        for table, size in previous.encoders.vocab_sizes().items():
            if self.prepared.manifest["vocab_sizes"].get(table, 0) < size:
                raise ValueError(
                    f"the prepared window's table '{table}' is smaller than in "
                    f"{run_dir}; prepare it with that run's encoders extended"
                )
        row_map = grow_into(self.model, previous.model.to(self.device))
        logger.info(
            "continuing from %s; new rows per table: %s",
            run_dir,
            {t: n for t, n in row_map.new_ids.items() if n} or "none",
        )
        return previous, row_map

    def _continue_optimizers(self, previous: LoadedRun, row_map: RowMap) -> None:
        """Take over the optimizer state of the run this one continues from.

        An update is more training of the same model, so it keeps the Adam
        moments (or Adagrad sums) of that run's latest checkpoint: each
        embedding row's state moves with its id, rows of new ids start at zero.
        Fresh optimizers would take steps of the full learning rate in the
        sign of each first gradient, on every weight at once: on the demo's
        logs a day's update then scored 0.713 test AUC, below the 0.726 of
        the model it started from; with the state continued, 0.745 (a
        retrain on the window: 0.740). Without a readable checkpoint, or with
        another embedding optimizer configured, they start afresh, with a
        warning: the weights are what matters most, and they are in place.
        """
        checkpoint = latest_checkpoint(previous.run_dir)
        before = previous.config.train.embedding_optimizer
        if checkpoint is None or before != self.config.train.embedding_optimizer:
            logger.warning(
                "optimizers start afresh: %s",
                f"{previous.run_dir} has no checkpoint"
                if checkpoint is None
                else f"it used embedding_optimizer {before!r}",
            )
            return
        old_optimizers = build_optimizers(previous.model, previous.config)
        try:
            # Into the old model, whose weights were copied already.
            load_checkpoint(
                checkpoint,
                model=previous.model,
                optimizers=old_optimizers,
                device=self.device,
            )
        except CheckpointError as error:
            logger.warning("optimizers start afresh: %s", error)
            return
        old_params = dict(previous.model.named_parameters())
        names = {id(p): n for n, p in self.model.named_parameters()}
        for label, optimizer in self.optimizers.items():
            old_state = old_optimizers[label].state
            params = [p for group in optimizer.param_groups for p in group["params"]]
            for param in params:
                name = names[id(param)]
                old = old_params[name]
                if old_state.get(old):  # else never stepped: as the new one made it
                    optimizer.state[param] = {
                        key: _carried(value, old, param, name, row_map)
                        for key, value in old_state[old].items()
                    }
        logger.info("optimizer state continued from %s", checkpoint)

    def _resume(self) -> None:
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.run_dir}")
        loaded = load_checkpoint(
            checkpoint, model=self.model, optimizers=self.optimizers, device=self.device
        )
        saved = loaded.trainer_state
        self.state = TrainState(**{k: v for k, v in saved.items() if k != "rng"})
        set_rng_state(saved["rng"])
        logger.info(
            "resumed %s at epoch %d, step %d",
            checkpoint,
            self.state.epoch,
            self.state.step_in_epoch,
        )

    # ------------------------------------------------------------------ loop

    @property
    def total_steps(self) -> int:
        return len(self.batches) * self.config.train.epochs

    def _set_learning_rate(self) -> None:
        factor = learning_rate_factor(
            self.config, self.state.global_step, self.total_steps
        )
        for name, optimizer in self.optimizers.items():
            for group, base in zip(
                optimizer.param_groups, self.base_rates[name], strict=True
            ):
                group["lr"] = base * factor

    def _step(self, batch) -> float:
        batch = batch.to(self.device, non_blocking=True)
        self._set_learning_rate()
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            # Autocast keeps the loss (binary cross-entropy) in float32.
            loss = self.objective.loss(self.forward_model, batch)
        penalty = self.embedding_penalty.take()
        (loss if penalty is None else loss + penalty).backward()
        clip = self.config.train.grad_clip_norm
        if clip is not None and "dense" in self.optimizers:
            # Clipping covers the dense part; sparse embedding gradients are
            # bounded by the few rows a batch touches.
            params = self.optimizers["dense"].param_groups[0]["params"]
            nn.utils.clip_grad_norm_(params, clip)
        for optimizer in self.optimizers.values():
            optimizer.step()
        return float(loss.detach())

    def _autocast(self) -> torch.autocast:
        """bf16 autocast of the forward pass when `train.precision` asks for it."""
        return torch.autocast(
            self.device.type,
            dtype=torch.bfloat16,
            enabled=self.precision == "bf16",
        )

    def fit(self) -> TrainResult:
        """Train until the last epoch or early stopping; evaluate; save the model."""
        train = self.config.train
        started = time.perf_counter()
        samples = 0
        steps_per_epoch = len(self.batches)
        while self.state.epoch < train.epochs and not self.state.stopped_early:
            self.model.train()
            epoch = self.state.epoch
            for batch in self.batches.batches(epoch, start=self.state.step_in_epoch):
                loss = self._step(batch)
                samples += len(batch)
                self.state.step_in_epoch += 1
                self.state.global_step += 1
                if self.state.global_step % train.log_every == 0:
                    self._log(
                        {"step": self.state.global_step, "epoch": epoch, "loss": loss}
                    )
                if self.on_step is not None:
                    self.on_step(epoch, self.state.step_in_epoch, steps_per_epoch, loss)
                if train.checkpoint_every and (
                    self.state.global_step % train.checkpoint_every == 0
                ):
                    self._checkpoint()
            self._end_epoch()
        seconds = time.perf_counter() - started
        metrics: dict[str, dict[str, float]] = {}
        if self.world.is_main:
            metrics = self._final_metrics()
            self._save_model(metrics)
        barrier(self.world)
        return TrainResult(
            run_dir=self.run_dir,
            metrics=metrics,
            best_epoch=self.state.best_epoch,
            parameters=count_parameters(self.model),
            seconds=seconds,
            # Every rank trains on as many samples as this one.
            samples_per_second=samples * self.world.size / seconds if seconds else 0.0,
        )

    def _end_epoch(self) -> None:
        """Evaluate; with a validation split, keep the best epoch and stop early.

        Without one, the test split is evaluated for the learning curve only:
        choosing epochs by test AUC would report an optimistic test AUC.
        """
        state, train = self.state, self.config.train
        self._refresh_batch_norm(state.epoch)
        selecting = "valid" in self.prepared.splits
        split = "valid" if selecting else "test"
        result = self.evaluate(split) if split in self.prepared.splits else {}
        record = {"epoch": state.epoch, "split": split, **result}
        state.history.append(record)
        self._log({"eval": record})
        score = result.get(self.objective.metric, float("nan"))
        if not selecting:
            state.best_epoch = state.epoch
        elif not math.isnan(score) and score > state.best_auc:
            state.best_auc, state.best_epoch = score, state.epoch
            state.epochs_without_gain = 0
            self._save_best()
        else:
            state.epochs_without_gain += 1
            patience = train.early_stopping_patience
            if patience is not None and state.epochs_without_gain >= patience:
                state.stopped_early = True
                logger.info(
                    "stopping early: validation %s has not improved for %d epoch(s)",
                    self.objective.metric,
                    state.epochs_without_gain,
                )
        state.epoch += 1
        state.step_in_epoch = 0
        self._checkpoint()

    # ------------------------------------------------------------------ eval

    @torch.no_grad()
    def _refresh_batch_norm(self, epoch: int) -> None:
        """Measure every batch norm's statistics again with the current weights.

        The running averages of training mix batches of the epoch's earlier
        weights, so evaluation normalises with statistics that no longer fit;
        an epoch at a learning rate that moves the weights much (the first
        ones, or one day's update) suffers most. Re-measured on the first
        `train.batch_norm_refresh` batches of this epoch, as plain averages,
        with dropout off as in evaluation: on the demo's logs, +0.003 to
        +0.007 test AUC for a Wide-ResNet trained one epoch. Deterministic (a
        seeded batch order, no random draws), so a resumed run repeats it.
        """
        norms = [m for m in self.model.modules() if isinstance(m, _BATCH_NORMS)]
        count = self.config.train.batch_norm_refresh
        if not norms or not count:
            return
        was_training = self.model.training
        momenta = [norm.momentum for norm in norms]
        self.model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average of the batches that follow
            norm.train()
        for index, batch in enumerate(self.batches.batches(epoch)):
            if index == count:
                break
            self.objective.loss(self.model, batch.to(self.device))
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        self.model.train(was_training)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """The objective's metrics of the current model on a split (for
        ranking: AUC, logloss, GAUC and calibration)."""
        was_training = self.model.training
        self.model.eval()
        # In float32 whatever the training precision: the weights are float32,
        # and these are the numbers that scoring the saved model reproduces.
        metrics = self.objective.evaluate(self.model, self.prepared, split, self.device)
        self.model.train(was_training)
        return metrics

    def _final_metrics(self) -> dict[str, dict[str, float]]:
        """Metrics of the best epoch's weights on every held-out split."""
        best = self.run_dir / "best.safetensors"
        if best.is_file():
            load_weights(best, self.model)
        was_training = self.model.training
        self.model.eval()
        fitted = self.objective.calibrate(self.model, self.prepared)
        self.model.train(was_training)
        if fitted:
            self._log({"calibration": fitted})
        metrics = {}
        for split in ("valid", "test"):
            if split in self.prepared.splits:
                metrics[split] = self.evaluate(split)
                self._log({"final": {"split": split, **metrics[split]}})
        return metrics

    # ------------------------------------------------------------------ files

    def _log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        with (self.run_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if "eval" in record:
            shown = {k: v for k, v in record["eval"].items() if isinstance(v, float)}
            logger.info(
                "epoch %d %s: %s",
                record["eval"]["epoch"],
                record["eval"]["split"],
                ", ".join(f"{k} {v:.4f}" for k, v in shown.items()),
            )

    def _checkpoint(self) -> None:
        if not self.world.is_main:
            return
        trainer_state = {**self.state.__dict__, "rng": rng_state()}
        folder = self.run_dir / "checkpoints" / f"step-{self.state.global_step:09d}"
        save_checkpoint(
            folder,
            model=self.model,
            optimizers=self.optimizers,
            scheduler_state=None,
            trainer_state=trainer_state,
            metadata={"model": self.objective.name},
        )
        prune_checkpoints(self.run_dir, keep=2)

    def _save_best(self) -> None:
        if not self.world.is_main:
            return
        save_weights(self.run_dir / "best.safetensors", self.model)

    def _save_model(self, metrics: dict[str, dict[str, float]]) -> None:
        """The final artifact: weights plus what is needed to rebuild the model."""
        folder = self.run_dir / "model"
        folder.mkdir(exist_ok=True)
        save_weights(folder / "model.safetensors", self.model)
        atomic_write_json(
            folder / "model.json",
            {
                "model": self.objective.model_info(),
                "vocab_sizes": self.prepared.manifest["vocab_sizes"],
                "cross_sizes": self.prepared.manifest["cross_sizes"],
                "parameters": count_parameters(self.model),
                "best_epoch": self.state.best_epoch,
                "metrics": metrics,
            },
        )
        logger.info("model written to %s", folder)
