"""The training loop (SPEC §3): shuffled batches, sampled negatives, Adam, early stopping."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.dataset import InteractionData
from pipeline.evaluation import Evaluator
from pipeline.models.base import Batch
from pipeline.sampling import NegativeSampler

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def configure_runtime(threads: int) -> None:
    """Process-wide numeric settings: CPU threads (0 keeps torch's default) and flush-to-zero.

    Subnormal floats slow CPU kernels several-fold (the reference's FREEDOMc epoch: 95 s -> 26 s);
    flushing them changes values only below 1e-38.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


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


def train(
    objective: nn.Module,
    data: InteractionData,
    cfg: ExperimentConfig,
    device: torch.device,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Train `objective` (a base model or DVIB around one) with early stopping on validation."""
    objective.to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(
        objective.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay
    )
    train_users = torch.as_tensor(data.train.users, device=device)
    train_items = torch.as_tensor(data.train.items, device=device)
    sampler = NegativeSampler(data.train, data.n_items, device) if objective.needs_negatives else None
    valid_eval = Evaluator(data, data.valid, cfg.eval.topk, cfg.eval.batch_size, device)
    test_eval = Evaluator(data, data.test, cfg.eval.topk, cfg.eval.batch_size, device)
    metric = cfg.eval.valid_metric

    best_score, best_epoch, stale = -math.inf, -1, 0
    best_valid: dict[str, float] = {}
    best_test: dict[str, float] = {}
    best_state = {k: v.detach().clone() for k, v in objective.state_dict().items()}
    status = "max_epochs"
    started = time.perf_counter()
    epoch = -1
    for epoch in range(cfg.train.epochs):
        tick = time.perf_counter()
        objective.train()
        objective.pre_epoch(generator)
        order = torch.randperm(len(train_users), generator=generator, device=device)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, len(order), cfg.train.batch_size):
            rows = order[start : start + cfg.train.batch_size]
            users = train_users[rows]
            negatives = sampler.sample(users, generator) if sampler is not None else None
            loss = objective.loss(Batch(users, train_items[rows], negatives))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(rows)
        train_loss = float(loss_sum) / len(order)
        if not math.isfinite(train_loss):
            log.warning("epoch %d: training loss is %s; stopping and keeping epoch %d", epoch, train_loss, best_epoch)
            status = "diverged"
            break

        objective.eval()
        scorer = objective.scorer()
        valid = valid_eval.evaluate(scorer)
        improved = valid[metric] > best_score
        if improved:
            best_score, best_epoch, stale = valid[metric], epoch, 0
            best_valid, best_test = valid, test_eval.evaluate(scorer)
            best_state = {k: v.detach().clone() for k, v in objective.state_dict().items()}
        else:
            stale += 1
        seconds = time.perf_counter() - tick
        log.info(
            "epoch %3d  loss %.5f  valid %s %.5f%s  %.2fs",
            epoch, train_loss, metric, valid[metric], "  *" if improved else "", seconds,
        )
        if on_epoch is not None:
            on_epoch(EpochLog(epoch, train_loss, valid, improved, seconds))
        if stale > cfg.train.stopping_step:
            status = "early_stopped"
            break

    return TrainResult(
        status=status,
        best_epoch=best_epoch,
        epochs_run=epoch + 1,
        valid=best_valid,
        test=best_test,
        train_seconds=time.perf_counter() - started,
        best_state=best_state,
    )
