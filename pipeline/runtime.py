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


def describe_hardware(device: torch.device) -> dict[str, object]:
    """What computed a result: the device's model name, torch's version and the CPU threads in use.

    Floating-point sums differ in their last digits across CPU and GPU models, so a metric that
    moves between two machines, same code and data, is read against this record.
    """
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()
    # str(): torch.__version__ is a str subclass that weights-only loading of the resume state rejects
    return {"device_name": name, "torch": str(torch.__version__), "threads": torch.get_num_threads()}


def cpu_model_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows of it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
