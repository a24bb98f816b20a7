"""Benchmark every model combination: seconds per training epoch, seconds per full-sort evaluation
of one split, peak memory, and the distance to the floor set by the matrix products an epoch cannot
avoid (benchmarks/floors.py).

Usage, from the project root:
  .venv/bin/python benchmarks/benchmark.py                        # all combinations, Baby-sized, CPU
  .venv/bin/python benchmarks/benchmark.py --size small           # quick: a small set, same feature widths
  .venv/bin/python benchmarks/benchmark.py --models VBPR VBPRc --epochs 5
  .venv/bin/python benchmarks/benchmark.py --device cuda --in-process
  .venv/bin/python benchmarks/benchmark.py --stage-dir /tmp/bench-project --max-epochs 300
      # then, for one full early-stopped run by the pipeline's own train stage:
      # cd /tmp/bench-project && python -m pipeline.stages.train --model FREEDOMa --dataset benchmark \
      #     --record train.json --checkpoint train.pt --curves curves

What it does:
  1. Generates a synthetic MMRec dataset with the project's generator (Baby-sized: 19,445 users,
     7,050 items, ~160,000 interactions, 4096-d image and 384-d text features; params.yaml's
     `synthetic` knobs) into a cache folder outside data/ (--cache-dir), once, with its graph files
     as the graphs stage writes them (pipeline.graphs.write_graphs).
  2. Measures the machine: median GFLOP/s of torch.mm on representative shapes and the copy
     bandwidth, before and after the models (a difference between the two means the machine was busy).
  3. For each combination, in a fresh subprocess (so the peak RSS is that combination's), builds
     the model from params.yaml exactly as the train stage does, runs --warmup epochs and then
     --epochs timed epochs of the real trainer's `train_epoch`, then times --eval-repeats full-sort
     evaluations of the validation split (scorer + Evaluator.evaluate, as the trainer does per epoch).
  4. Prints a table and writes JSON (default benchmarks/results/<device>[-small].json).

Columns: epoch s = median seconds per training epoch [min-max]; cpu s = median CPU seconds of the
process per epoch, all threads (with --threads 1 on a busy machine: the epoch's work without the
wait for a CPU; with several threads it also counts their spin-waits); ref s = the reference
implementation's seconds per epoch on the Baby-sized set (2-core CPU, torch 2.13, 2 threads;
docs/speed.md, "The reference implementation"), comparable only for --size baby on a 2-core CPU; speed-up = ref (low end) / ours;
floor s = unavoidable matrix-product FLOPs / best measured matmul rate + Adam's minimal memory
traffic / copy bandwidth; x floor = ours / floor s; eval s = median seconds per full-sort
evaluation of the validation split; peak MB = peak RSS of the combination's process (CPU) or
torch.cuda.max_memory_allocated (CUDA); +model MB = peak RSS from model construction on, minus the
RSS after loading the data (the model's and training's own memory).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.floors import Workload, adam_bytes, epoch_floor, evaluation_floor  # noqa: E402
from pipeline.atomic import staged_directory, write_json, write_text  # noqa: E402
from pipeline.config import SyntheticConfig, experiment_config, from_mapping, read_params, section  # noqa: E402
from pipeline.dataset import InteractionData, load_mmrec  # noqa: E402
from pipeline.evaluation import Evaluator  # noqa: E402
from pipeline.graphs import Graphs, knn_adjacency, load_graphs, write_graphs  # noqa: E402
from pipeline.model_names import model_names, parse_model_name  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.stages.common import DATASETS_DIR, GRAPHS_DIR  # noqa: E402
from pipeline.synthetic import write_synthetic  # noqa: E402
from pipeline.runtime import configure_runtime, resolve_device  # noqa: E402
from pipeline.trainer import TrainRows, make_optimizer, train_epoch  # noqa: E402

# Dataset sizes: users, items, mean interactions per user (~160,000 interactions for Baby).
SIZES = {
    "baby": {"n_users": 19445, "n_items": 7050, "mean_interactions": 8.23},
    "small": {"n_users": 3000, "n_items": 1200, "mean_interactions": 8.23},
}
FEATURE_DIMS = {"image_dim": 4096, "text_dim": 384}

# The reference implementation's seconds per training epoch (docs/speed.md, "The reference implementation"):
# (low, high); high None means "more than low" (the run was stopped).
REFERENCE_EPOCH_SECONDS = {
    "VBPR": (12.7, 12.7), "VBPRc": (86.0, 104.0), "VBPRa": (87.0, 87.0),
    "MMGCN": (132.0, 132.0), "MMGCNc": (360.0, None), "MMGCNa": (360.0, None),
    "GRCN": (89.0, 104.0), "GRCNc": (195.0, 205.0), "GRCNa": (171.0, 171.0),
    "BM3": (29.7, 29.7), "BM3c": (31.7, 31.7), "BM3a": (33.0, 33.0),
    "FREEDOM": (27.0, 32.0), "FREEDOMc": (68.0, 95.0), "FREEDOMa": (28.0, 28.0),
}
REFERENCE_EVAL_SECONDS = (3.3, 6.0)

# torch.mm shapes [m, k] @ [k, n]: a batch through a 4096-wide projection, the N-node scale of
# a full item × user score product, and a B × I score view.
MATMUL_SHAPES = ((2048, 4096, 256), (7050, 64, 19445), (2048, 128, 7050))


# ---------------------------------------------------------------- dataset


def synthetic_config(size: str, params: dict) -> SyntheticConfig:
    """The generator's config for `size`: params.yaml's synthetic knobs with the size's counts."""
    knobs = {k: v for k, v in section(params, "synthetic").items() if k != "seed"}
    cfg = from_mapping(SyntheticConfig, knobs, "synthetic")
    return replace(cfg, **SIZES[size], **FEATURE_DIMS)


DATASET = "benchmark"  # the dataset's name: its folder and its `.inter` file
LAYOUT = 2  # of the cache folder: <DATASET>/ (MMRec files) and graphs/ (the graphs stage's files)


def prepare_dataset(size: str, params: dict, cache_dir: Path) -> Path:
    """Generate (once) the dataset of `size` and its graph files under `cache_dir`; return the folder
    holding `benchmark/` (the MMRec-format dataset) and `graphs/` (as the graphs stage writes them)."""
    cfg = synthetic_config(size, params)
    seed = section(params, "synthetic.seed")
    knn_k = section(params, "graphs.knn_k")
    key = json.dumps({"cfg": asdict(cfg), "seed": seed, "knn_k": knn_k, "layout": LAYOUT}, sort_keys=True)
    folder = cache_dir / f"{size}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if (folder / "ready").is_file():
        return folder
    tick = time.perf_counter()
    with staged_directory(folder) as staging:
        write_synthetic(staging / DATASET, cfg, seed)
        write_graphs(staging / "graphs", load_mmrec(staging / DATASET), knn_k)
        write_text(staging / "config.json", key + "\n")
        write_text(staging / "ready", f"built in {time.perf_counter() - tick:.1f}s\n")
    return folder


def write_stage_project(folder: Path, params: dict, stage_dir: Path, device: str, max_epochs: int) -> None:
    """Make `stage_dir` a project folder in which the pipeline's stages run on the benchmark set:
    data/datasets/benchmark and data/graphs/benchmark link to the cache, and params.yaml is this
    project's with `train.device` and `train.epochs` set (run from it: `python -m pipeline.stages.train
    --model NAME --dataset benchmark ...`, with this repository on PYTHONPATH)."""
    settings = dict(params, train={**section(params, "train"), "device": device, "epochs": max_epochs})
    for link, target in ((Path(DATASETS_DIR) / DATASET, folder / DATASET), (Path(GRAPHS_DIR) / DATASET, folder / "graphs")):
        path = stage_dir / link
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.symlink_to(target.resolve(), target_is_directory=True)
    write_text(stage_dir / "params.yaml", yaml.safe_dump(settings, sort_keys=False))


def workload(data: InteractionData, graphs: Graphs, batch_size: int) -> Workload:
    """The sizes the floors depend on."""
    mixed = (knn_adjacency(graphs.knn["image"], data.n_items) + knn_adjacency(graphs.knn["text"], data.n_items))
    return Workload(
        n_users=data.n_users,
        n_items=data.n_items,
        n_train=len(data.train),
        n_pairs=len(np.unique(data.train.users * data.n_items + data.train.items)),
        n_mm_adj=int(mixed.coalesce()._nnz()),
        image_dim=data.image_features.shape[1],
        text_dim=data.text_features.shape[1],
        batch_size=batch_size,
        user_counts=tuple(int(c) for c in np.bincount(data.train.users) if c),
        item_counts=tuple(int(c) for c in np.bincount(data.train.items) if c),
    )


def workload_sizes(w: Workload) -> dict:
    """The workload's sizes for the JSON report (the per-user and per-item counts left out)."""
    return {k: v for k, v in asdict(w).items() if k not in ("user_counts", "item_counts")}


# ---------------------------------------------------------------- machine


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        tick = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def measure_machine(device: torch.device, repeats: int = 5) -> dict:
    """Median GFLOP/s of torch.mm on MATMUL_SHAPES, and copy bandwidth in GB/s (read + write)."""
    g = torch.Generator(device=device).manual_seed(0)
    rates = []
    for m, k, n in MATMUL_SHAPES:
        a = torch.randn(m, k, generator=g, device=device)
        b = torch.randn(k, n, generator=g, device=device)
        seconds = _median_seconds(lambda: torch.mm(a, b), device, repeats)
        rates.append({"shape": f"{m}x{k} @ {k}x{n}", "gflops": 2.0 * m * k * n / seconds / 1e9})
    src = torch.randn(1 << 25, generator=g, device=device)  # 128 MiB, beyond any cache
    dst = torch.empty_like(src)
    seconds = _median_seconds(lambda: dst.copy_(src), device, repeats)
    return {
        "matmul": rates,
        "best_gflops": max(r["gflops"] for r in rates),
        "copy_gbs": 2 * src.numel() * 4 / seconds / 1e9,
    }


def machine_description(device: torch.device) -> dict:
    """What the numbers were taken on."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return out


# ---------------------------------------------------------------- one combination


def apply_runtime(args: argparse.Namespace) -> None:
    """The trainer's process settings (configure_runtime), with this run's lever overrides."""
    if args.malloc == "reuse":
        configure_runtime(args.threads)
    elif args.threads > 0:  # configure_runtime without its malloc setting
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.denormals == "flush")
    torch.set_float32_matmul_precision(args.matmul_precision)



def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) at the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    """Current resident set size in MiB."""
    kib = _proc_status_kib("VmRSS")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: VmHWM (which starts afresh at exec and at
    `reset_peak_rss`), else getrusage's ru_maxrss (which can include the parent's RSS at fork)."""
    kib = _proc_status_kib("VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def measure_combination(model: str, folder: Path, args: argparse.Namespace) -> dict:
    """Time `args.epochs` training epochs (after `args.warmup`) and `args.eval_repeats` evaluations."""
    device = resolve_device(args.device)
    apply_runtime(args)
    cfg = experiment_config(read_params(ROOT / "params.yaml"), model, "benchmark")
    data = load_mmrec(folder / DATASET)
    graphs = load_graphs(folder / "graphs", device)
    valid_eval = Evaluator(data, data.valid, cfg.eval.topk, cfg.eval.batch_size, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    peak_before_model = peak_rss_mb()
    peak_reset = reset_peak_rss()
    rss_before = rss_mb()

    torch.manual_seed(cfg.seed)
    objective = build_model(cfg, data, graphs).to(device)
    optimizer = make_optimizer(objective, cfg)
    rows = TrainRows(data, device, with_negatives=objective.needs_negatives)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def epoch() -> tuple[float, float, float]:
        _sync(device)
        tick, cpu_tick = time.perf_counter(), time.process_time()
        loss = train_epoch(objective, optimizer, rows, cfg.train.batch_size, generator)
        _sync(device)
        return time.perf_counter() - tick, time.process_time() - cpu_tick, loss

    warmup = [epoch() for _ in range(args.warmup)]
    timed = [epoch() for _ in range(args.epochs)]

    def evaluation() -> tuple[float, float]:
        _sync(device)
        tick = time.perf_counter()
        objective.eval()
        metrics = valid_eval.evaluate(objective.scorer())
        _sync(device)
        return time.perf_counter() - tick, metrics[cfg.eval.valid_metric]

    evaluation()  # warm-up
    evals = [evaluation() for _ in range(args.eval_repeats)]
    epoch_seconds = [s for s, _, _ in timed]
    epoch_cpu_seconds = [c for _, c, _ in timed]
    eval_seconds = [s for s, _ in evals]
    return {
        "model": model,
        "status": "ok",
        "warmup_seconds": [round(s, 4) for s, _, _ in warmup],
        "epoch_seconds": [round(s, 4) for s in epoch_seconds],
        "median_epoch_seconds": statistics.median(epoch_seconds),
        "epoch_cpu_seconds": [round(c, 4) for c in epoch_cpu_seconds],
        "median_epoch_cpu_seconds": statistics.median(epoch_cpu_seconds),
        "eval_seconds": [round(s, 4) for s in eval_seconds],
        "median_eval_seconds": statistics.median(eval_seconds),
        "train_losses": [loss for _, _, loss in warmup + timed],
        f"valid_{cfg.eval.valid_metric}": evals[-1][1],
        "n_parameters": sum(p.numel() for p in objective.parameters() if p.requires_grad),
        "peak_rss_mb": max(peak_rss_mb(), peak_before_model),
        "rss_after_data_mb": rss_before,
        "peak_rss_after_data_mb": peak_rss_mb() if peak_reset else None,
        "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "flush_denormal": args.denormals == "flush",
        "matmul_precision": torch.get_float32_matmul_precision(),
        "malloc": args.malloc,
        "batch_size": cfg.train.batch_size,
        "batches_per_epoch": math.ceil(len(rows) / cfg.train.batch_size),
    }


def run_isolated(model: str, folder: Path, args: argparse.Namespace) -> dict:
    """`measure_combination` in a fresh Python process (its own peak RSS); errors become a status."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", model, "--dataset-dir", str(folder),
                   "--result-file", str(out), *worker_flags(args)]
        try:
            proc = subprocess.run(command, timeout=args.timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        except subprocess.TimeoutExpired:
            return {"model": model, "status": f"timeout after {args.timeout}s"}
        if proc.returncode != 0 or not out.is_file():
            tail = proc.stdout.strip().splitlines()[-5:]
            return {"model": model, "status": f"error (exit {proc.returncode})", "log_tail": tail}
        return json.loads(out.read_text())


def run_in_process(model: str, folder: Path, args: argparse.Namespace) -> dict:
    """`measure_combination` in this process (CUDA: peak memory is reset per combination)."""
    try:
        return measure_combination(model, folder, args)
    except Exception as exc:  # noqa: BLE001 -- one failing model must not stop the benchmark
        return {"model": model, "status": f"error: {type(exc).__name__}: {exc}"}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def worker_flags(args: argparse.Namespace) -> list[str]:
    return ["--device", args.device, "--epochs", str(args.epochs), "--warmup", str(args.warmup),
            "--eval-repeats", str(args.eval_repeats), "--threads", str(args.threads), "--denormals", args.denormals,
            "--matmul-precision", args.matmul_precision, "--malloc", args.malloc]


# ---------------------------------------------------------------- floors and report


def attach_floor(result: dict, w: Workload, params: dict, machine: dict, n_eval_users: int) -> None:
    """Add the floor (seconds an epoch cannot beat on this machine) and our multiple of it."""
    base, variant = parse_model_name(result["model"])
    settings = {**section(params, f"models.{base}"), "noise_hidden": tuple(section(params, "dvib.noise_hidden"))}
    flops = epoch_floor(base, variant, w, settings)
    if flops is None or result.get("status") != "ok":
        return
    matmul_s = flops.total / (machine["best_gflops"] * 1e9)
    adam_s = adam_bytes(result["n_parameters"]) * result["batches_per_epoch"] / (machine["copy_gbs"] * 1e9)
    eval_flops = evaluation_floor(base, n_eval_users, w, settings)
    result["floor"] = {
        "epoch_gflop": flops.total / 1e9,
        "parts_gflop": {k: round(v / 1e9, 3) for k, v in sorted(flops.parts.items(), key=lambda kv: -kv[1])},
        "matmul_seconds": matmul_s,
        "adam_seconds": adam_s,
        "seconds": matmul_s + adam_s,
        "eval_seconds": eval_flops / (machine["best_gflops"] * 1e9),
    }
    result["times_floor"] = result["median_epoch_seconds"] / result["floor"]["seconds"]


def attach_reference(result: dict, comparable: bool) -> None:
    """Add the reference's seconds per epoch and, where comparable, our speed-up over its low end."""
    ref = REFERENCE_EPOCH_SECONDS.get(result["model"])
    if ref is None:
        return
    result["reference_epoch_seconds"] = list(ref)
    if comparable and result.get("status") == "ok":
        result["speedup"] = ref[0] / result["median_epoch_seconds"]
        result["speedup_is_lower_bound"] = ref[1] is None


def _fmt_ref(ref) -> str:
    if ref is None:
        return "-"
    low, high = ref
    if high is None:
        return f">{low:g}"
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def format_table(results: list[dict]) -> str:
    """The report table, one row per combination."""
    header = ("model", "epoch s [min-max]", "cpu s", "ref s", "speed-up", "floor s", "x floor", "eval s", "peak MB",
              "+model MB")
    rows = [header]
    for r in results:
        if r.get("status") != "ok":
            rows.append((r["model"], r.get("status", "?"), "", _fmt_ref(r.get("reference_epoch_seconds")),
                         "", "", "", "", "", ""))
            continue
        times = r["epoch_seconds"]
        speed = r.get("speedup")
        speed_s = "-" if speed is None else (">" if r.get("speedup_is_lower_bound") else "") + f"{speed:.1f}x"
        floor = r.get("floor")
        peak = r["cuda_peak_mb"] if r.get("cuda_peak_mb") is not None else r["peak_rss_mb"]
        after_data = r.get("peak_rss_after_data_mb") or r["peak_rss_mb"]
        extra = "-" if r.get("cuda_peak_mb") is not None else f"{after_data - r['rss_after_data_mb']:.0f}"
        rows.append((
            r["model"],
            f"{r['median_epoch_seconds']:.2f} [{min(times):.2f}-{max(times):.2f}]",
            f"{r['median_epoch_cpu_seconds']:.2f}",
            _fmt_ref(r.get("reference_epoch_seconds")),
            speed_s,
            "-" if floor is None else f"{floor['seconds']:.2f}",
            "-" if floor is None else f"{r['times_floor']:.1f}",
            f"{r['median_eval_seconds']:.3f}",
            f"{peak:.0f}",
            extra,
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_machine(before: dict, after: dict | None) -> str:
    parts = []
    for label, m in (("before", before), ("after", after)):
        if m is None:
            continue
        rates = ", ".join(f"{r['shape']}: {r['gflops']:.0f}" for r in m["matmul"])
        parts.append(f"machine {label}: matmul GFLOP/s {rates} (best {m['best_gflops']:.0f}); "
                     f"copy {m['copy_gbs']:.1f} GB/s")
    return "\n".join(parts)


# ---------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help=f"combinations to run (default: all registered: {' '.join(model_names())})")
    parser.add_argument("--size", choices=sorted(SIZES), default="baby", help="dataset size (default baby)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per combination (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs before them (default 1)")
    parser.add_argument("--eval-repeats", type=int, default=3,
                        help="timed full-sort evaluations of the validation split (default 3, after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--denormals", choices=("flush", "keep"), default="flush",
                        help="flush subnormal floats to zero (the trainer's setting) or keep them")
    parser.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default="highest",
                        help="torch.set_float32_matmul_precision for the models (a lever to measure, not what the "
                             "pipeline does: 'medium' lets oneDNN/cuBLAS use bf16/TF32 inside float32 products; "
                             "default highest = exact float32)")
    parser.add_argument("--malloc", choices=("reuse", "system"), default="reuse",
                        help="reuse: the trainer's setting (glibc keeps freed memory for reuse); system: glibc's "
                             "default, every large tensor a fresh mmap (to measure that lever)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every combination in this process (for CUDA; CPU peak RSS is then not per model)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per combination (isolated)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "dvib-benchmark",
                        help="where the generated dataset is kept between runs (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON output (default benchmarks/results/<device>.json, <device>-small.json for small)")
    parser.add_argument("--stage-dir", type=Path, default=None,
                        help="instead of the benchmark: prepare the set and make this folder a project in which "
                             "the pipeline's stages run on it (dataset `benchmark`; see the usage above)")
    parser.add_argument("--max-epochs", type=int, default=1000,
                        help="train.epochs of the --stage-dir project's params.yaml (default 1000)")
    parser.add_argument("--worker", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--dataset-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.eval_repeats < 1 or args.warmup < 0:
        parser.error("--epochs and --eval-repeats must be >= 1, --warmup >= 0")
    if args.models:
        unknown = [m for m in args.models if m not in model_names()]
        if unknown:
            parser.error(f"unknown model(s) {unknown}; registered: {' '.join(model_names())}")
    return args


def _default_output(device: torch.device, size: str) -> Path:
    suffix = "" if size == "baby" else "-" + size
    return ROOT / "benchmarks" / "results" / f"{device.type}{suffix}.json"


def run_benchmark(args: argparse.Namespace, params: dict, folder: Path, device: torch.device) -> int:
    """Measure every selected combination; the JSON is rewritten after each, so a stopped run keeps
    what it measured."""
    started = time.perf_counter()
    models = args.models or model_names()
    data = load_mmrec(folder / DATASET)
    graphs = load_graphs(folder / "graphs")
    batch_size = section(params, "train.batch_size")
    w = workload(data, graphs, batch_size)
    n_eval_users = len(np.unique(data.valid.users))
    del graphs

    machine = machine_description(device)
    before = measure_machine(device)
    print(format_machine(before, None), file=sys.stderr, flush=True)
    output = args.output or _default_output(device, args.size)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("worker", "dataset_dir", "result_file")},
        "dataset": {"size": args.size, "folder": str(folder), **workload_sizes(w), "n_valid_users": n_eval_users},
        "machine": machine,
        "machine_rates_before": before,
        "machine_rates_after": None,
        "reference": {"epoch_seconds": REFERENCE_EPOCH_SECONDS, "eval_seconds": REFERENCE_EVAL_SECONDS,
                      "setting": "reference implementation, Baby-sized synthetic set, 2-core CPU, torch 2.13, "
                                 "2 threads"},
        "results": [],
    }
    comparable = args.size == "baby" and device.type == "cpu"
    run = run_in_process if args.in_process else run_isolated
    for model in models:
        print(f"{model} ...", file=sys.stderr, flush=True)
        result = run(model, folder, args)
        result.setdefault("model", model)
        attach_floor(result, w, params, before, n_eval_users)
        attach_reference(result, comparable)
        if result.get("status") == "ok":
            print(f"{model}: {result['median_epoch_seconds']:.2f} s/epoch, "
                  f"{result['median_eval_seconds']:.3f} s/eval", file=sys.stderr, flush=True)
        else:
            print(f"{model}: {result.get('status')} {result.get('log_tail', '')}", file=sys.stderr, flush=True)
        report["results"].append(result)
        write_json(output, report)

    after = measure_machine(device)
    machine["load_average_after"] = os.getloadavg()
    report["machine_rates_after"] = after
    # The floor uses the best rates seen: on a busy machine the lower reading is the disturbed one.
    best = {"best_gflops": max(before["best_gflops"], after["best_gflops"]),
            "copy_gbs": max(before["copy_gbs"], after["copy_gbs"])}
    report["floor_rates"] = best
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    for result in report["results"]:
        attach_floor(result, w, params, best, n_eval_users)
    # The shortest this run could have been: every timed and warm-up epoch at its floor.
    report["floor_epochs_seconds"] = round((args.warmup + args.epochs) * sum(
        r["floor"]["seconds"] for r in report["results"] if "floor" in r), 1)
    write_json(output, report)

    print(f"\n{args.size} set: {w.n_users} users, {w.n_items} items, {w.n_train} train rows "
          f"({-(-w.n_train // batch_size)} batches of {batch_size}), {n_eval_users} validation users; "
          f"device {device}, {machine['torch_threads']} threads, denormals {args.denormals}, "
          f"matmul precision {args.matmul_precision}, malloc {args.malloc}; "
          f"{args.warmup} warm-up + {args.epochs} timed epochs, {args.eval_repeats} timed evaluations")
    print(format_machine(before, after))
    print(f"floors use {best['best_gflops']:.0f} GFLOP/s and {best['copy_gbs']:.1f} GB/s (the best readings); "
          f"load average before {machine['load_average'][0]:.2f}, after {machine['load_average_after'][0]:.2f} "
          f"({machine['cpu_count']} CPUs): a busy machine inflates every figure\n")
    print(format_table(report["results"]))
    print(f"\nref s: reference implementation, Baby-sized set, 2-core CPU, 2 threads; its evaluation took "
          f"{REFERENCE_EVAL_SECONDS[0]:g}-{REFERENCE_EVAL_SECONDS[1]:g} s per split. "
          f"Speed-up only for --size baby on CPU.")
    print(f"whole benchmark: {report['total_seconds'] / 60:.1f} min (dataset ready; machine rates, "
          f"{len(models)} combinations, each in its own process); the floors alone of its "
          f"{args.warmup + args.epochs} epochs per combination: {report['floor_epochs_seconds'] / 60:.1f} min")
    print(f"written: {output}")
    return 0 if all(r.get("status") == "ok" for r in report["results"]) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:  # child process: one combination, result as JSON
        result = measure_combination(args.worker, args.dataset_dir, args)
        args.result_file.write_text(json.dumps(result))
        return 0

    device = resolve_device(args.device)
    apply_runtime(args)
    torch.set_float32_matmul_precision("highest")  # the machine's rates: exact float32 products
    params = read_params(ROOT / "params.yaml")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"preparing the {args.size} dataset in {args.cache_dir} ...", file=sys.stderr, flush=True)
    folder = prepare_dataset(args.size, params, args.cache_dir)
    if args.stage_dir:
        write_stage_project(folder, params, args.stage_dir, args.device, args.max_epochs)
        print(f"{args.stage_dir}: the benchmark set as dataset `{DATASET}`", file=sys.stderr)
        return 0
    return run_benchmark(args, params, folder, device)


if __name__ == "__main__":
    sys.exit(main())
