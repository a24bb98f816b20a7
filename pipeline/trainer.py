"""The training loop (SPEC §3): shuffled batches, sampled negatives, Adam, early stopping."""
from __future__ import annotations

import ctypes
import logging
import math
import platform
import sys
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
    """Process-wide settings: CPU threads (0 keeps torch's default), flush-to-zero, and reuse of
    freed memory.

    Subnormal floats slow CPU kernels several-fold (the reference's FREEDOMc epoch: 95 s -> 26 s);
    flushing them changes values only below 1e-38. Reusing freed memory changes no value.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    reuse_freed_memory()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of unmapping it; False where that
    does not apply (not Linux/glibc).

    Every large CPU tensor (a B × I score view is 57 MB) would otherwise be a fresh mmap whose
    pages the kernel faults in and zeroes on first touch: on a VM that made an out-of-place
    element-wise op over such a tensor 3-4x slower than the arithmetic (benchmarks/levers.py,
    lever `malloc`). The cost: the process does not return freed memory to the OS before it
    exits (its peak RSS is unchanged).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    return ok


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
    """Adam with the configured constant learning rate and weight decay (SPEC §3).

    The fused kernel does the same arithmetic in one pass per tensor: ~6x faster than torch's
    default on BM3/FREEDOM's 33 M trainable parameters on CPU, equal to it up to float rounding
    (benchmarks/levers.py, tests/test_speed_exactness.py).
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
) -> float:
    """One training epoch: the model's pre-epoch hook, then shuffled batches with fresh negatives.

    Returns the mean loss over rows (NaN/inf when the loss diverged).
    """
    objective.train()
    objective.pre_epoch(generator)
    order = torch.randperm(len(rows), generator=generator, device=rows.users.device)
    loss_sum = torch.zeros((), device=rows.users.device)
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        users = rows.users[picked]
        negatives = rows.sampler.sample(users, generator) if rows.sampler is not None else None
        loss = objective.loss(Batch(users, rows.items[picked], negatives))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(picked)
    return float(loss_sum) / len(order)


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
    optimizer = make_optimizer(objective, cfg)
    rows = TrainRows(data, device, with_negatives=objective.needs_negatives)
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
        train_loss = train_epoch(objective, optimizer, rows, cfg.train.batch_size, generator)
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
