"""The training loop (docs/method.md, "Training protocol"): shuffled batches, sampled negatives,
Adam, early stopping, and a state that a killed run resumes from."""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from tqdm import tqdm

from pipeline.config import ExperimentConfig
from pipeline.dataset import InteractionData
from pipeline.evaluation import Evaluator
from pipeline.models.base import Batch
from pipeline.resume import capture_rng, restore_rng
from pipeline.sampling import NegativeSampler

log = logging.getLogger(__name__)


@dataclass
class EpochLog:
    """What one epoch produced: mean train loss, validation metrics, and whether it improved."""

    epoch: int
    train_loss: float
    valid: dict[str, float]
    improved: bool
    seconds: float


@dataclass
class TrainResult:
    """Outcome of a run: the best-validation epoch's metrics and weights."""

    status: str  # "early_stopped", "max_epochs" or "diverged"
    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    test: dict[str, float]
    train_seconds: float
    best_state: dict[str, torch.Tensor] = field(repr=False)


class TrainRows:
    """The train split's (user, item) rows on the device, and the negative sampler when the model needs one."""

    def __init__(self, data: InteractionData, device: torch.device, with_negatives: bool):
        self.users = torch.as_tensor(data.train.users, device=device)
        self.items = torch.as_tensor(data.train.items, device=device)
        self.sampler = NegativeSampler(data.train, data.n_items, device) if with_negatives else None

    def __len__(self) -> int:
        return len(self.users)


def make_optimizer(objective: nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """Adam with the configured constant learning rate and weight decay (docs/method.md, "Training
    protocol").

    The fused kernel does the same arithmetic in one pass per tensor, equal to torch's default
    up to float rounding (tests/test_speed_exactness.py; benchmarks/levers.py measures its speed).
    """
    return torch.optim.Adam(
        objective.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay, fused=True
    )


def train_epoch(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    rows: TrainRows,
    batch_size: int,
    generator: torch.Generator,
    progress: str | None = None,
) -> float:
    """One training epoch: the model's pre-epoch hook, then shuffled batches with fresh negatives.

    Returns the mean loss over rows (NaN/inf when the loss diverged). With `progress` (a label),
    a progress bar of the batches with an ETA goes to stderr.
    """
    objective.train()
    objective.pre_epoch(generator)
    order = torch.randperm(len(rows), generator=generator, device=rows.users.device)
    loss_sum = torch.zeros((), device=rows.users.device)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", leave=False, disable=progress is None):
        picked = order[start : start + batch_size]
        users = rows.users[picked]
        negatives = rows.sampler.sample(users, generator) if rows.sampler is not None else None
        loss = objective.loss(Batch(users, rows.items[picked], negatives))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(picked)
    return float(loss_sum) / len(order)


def _snapshot(objective: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in objective.state_dict().items()}


@dataclass
class LoopState:
    """Where the training loop stands after an epoch: the early-stopping counters, the best epoch
    so far and the training time spent; with the weights, optimizer and RNGs it is what a resumed
    run needs."""

    next_epoch: int
    best_score: float
    best_epoch: int
    stale: int
    best_valid: dict[str, float]
    best_test: dict[str, float]
    best_state: dict[str, torch.Tensor] = field(repr=False)
    train_seconds: float

    def to_state(self, objective, optimizer, generator) -> dict[str, Any]:
        """The resumable state of the run: this loop state, weights, optimizer and every RNG."""
        best_is_current = self.best_epoch == self.next_epoch - 1  # then the weights are the best: save them once
        return {
            "loop": {k: v for k, v in vars(self).items() if k != "best_state"},
            "best_state": None if best_is_current else self.best_state,
            "model": objective.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": capture_rng(generator),
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any], objective, optimizer, generator) -> "LoopState":
        """Load weights, optimizer and RNGs from a `to_state` record and return its loop state."""
        objective.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], generator)
        best_state = state["best_state"] if state["best_state"] is not None else _snapshot(objective)
        return cls(**state["loop"], best_state=best_state)


def train(
    objective: nn.Module,
    data: InteractionData,
    cfg: ExperimentConfig,
    device: torch.device,
    on_epoch: Callable[[EpochLog], None] | None = None,
    *,
    resume_from: Mapping[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `objective` (a base model or DVIB around one) with early stopping on validation.

    `save_state` receives the resumable state after every `train.checkpoint_every`-th epoch (after
    `on_epoch`); passing such a state back as `resume_from` continues that run exactly where it was.
    """
    objective.to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    optimizer = make_optimizer(objective, cfg)
    rows = TrainRows(data, device, with_negatives=objective.needs_negatives)
    valid_eval = Evaluator(data, data.valid, cfg.eval.topk, cfg.eval.batch_size, device)
    test_eval = Evaluator(data, data.test, cfg.eval.topk, cfg.eval.batch_size, device)
    metric = cfg.eval.valid_metric
    show_bar = sys.stderr.isatty()

    if resume_from is None:
        loop = LoopState(0, -math.inf, -1, 0, {}, {}, _snapshot(objective), 0.0)
    else:
        loop = LoopState.restore(resume_from, objective, optimizer, generator)
    status = "early_stopped" if loop.stale > cfg.train.stopping_step else "max_epochs"
    first_epoch = cfg.train.epochs if status == "early_stopped" else loop.next_epoch
    spent, started = loop.train_seconds, time.perf_counter()
    epoch = loop.next_epoch - 1
    for epoch in range(first_epoch, cfg.train.epochs):
        tick = time.perf_counter()
        label = f"epoch {epoch}" if show_bar else None
        train_loss = train_epoch(objective, optimizer, rows, cfg.train.batch_size, generator, progress=label)
        if not math.isfinite(train_loss):
            log.warning("epoch %d: training loss is %s; stopping and keeping epoch %d",
                        epoch, train_loss, loop.best_epoch)
            status = "diverged"
            break

        objective.eval()
        scorer = objective.scorer()
        valid = valid_eval.evaluate(scorer)
        improved = valid[metric] > loop.best_score
        if improved:
            loop.best_score, loop.best_epoch, loop.stale = valid[metric], epoch, 0
            loop.best_valid, loop.best_test = valid, test_eval.evaluate(scorer)
            loop.best_state = _snapshot(objective)
        else:
            loop.stale += 1
        seconds = time.perf_counter() - tick
        log.info(
            "epoch %3d  loss %.5f  valid %s %.5f%s  %.2fs",
            epoch, train_loss, metric, valid[metric], "  *" if improved else "", seconds,
        )
        if on_epoch is not None:
            on_epoch(EpochLog(epoch, train_loss, valid, improved, seconds))
        loop.next_epoch = epoch + 1
        if save_state is not None and loop.next_epoch % cfg.train.checkpoint_every == 0:
            loop.train_seconds = spent + time.perf_counter() - started
            save_state(loop.to_state(objective, optimizer, generator))
        if loop.stale > cfg.train.stopping_step:
            status = "early_stopped"
            break

    return TrainResult(
        status=status,
        best_epoch=loop.best_epoch,
        epochs_run=epoch + 1,
        valid=loop.best_valid,
        test=loop.best_test,
        train_seconds=spent + time.perf_counter() - started,
        best_state=loop.best_state,
    )
