"""Process-wide settings for training and evaluation: the device, CPU threads, flush-to-zero, malloc reuse."""
from __future__ import annotations

import ctypes
import platform
import sys

import torch

from pipeline.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"params.yaml: train.device is {name!r} but CUDA is not available on this machine; "
                        "use `auto` (CUDA when present, else CPU) or `cpu`")
    return torch.device(name)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def configure_runtime(threads: int) -> None:
    """Set CPU threads (0 keeps torch's default), flush subnormal floats to zero, and reuse freed memory.

    Subnormal floats slow CPU kernels several-fold; flushing them changes values only below 1e-38.
    Reusing freed memory changes no value.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    reuse_freed_memory()


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of unmapping it; False where that
    does not apply (not Linux/glibc).

    Without it every large CPU tensor is a fresh mmap whose pages the kernel faults in and zeroes
    on first touch (benchmarks/levers.py, lever `malloc`, measures the cost). The price: the
    process does not return freed memory to the OS before it exits (its peak RSS is unchanged).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    return ok
