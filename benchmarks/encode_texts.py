"""Time to encode item texts with all-MiniLM-L6-v2, as the `amazon` dataset source does.

Usage, from the project root:
  .venv/bin/python benchmarks/encode_texts.py                         # 10,000 texts, CPU, 2 threads, 1 run
  .venv/bin/python benchmarks/encode_texts.py --repeats 3 --batch-size 64 128
  .venv/bin/python benchmarks/encode_texts.py --device cuda --repeats 3

The texts are MMRec-style item sentences (title, brand, category path, description) made from a
fixed vocabulary with a seeded generator: titles of 6-20 words, descriptions of log-normally
distributed length (median 90 words, at most 400), so that about one in six reaches the model's
256-token limit, as long Amazon descriptions do. The report gives the mean token count
(after truncation), because the time scales with it, and the CPU seconds of each run next to the
wall-clock ones (on a shared machine the wall clock includes waiting for other processes). Prints one
JSON document; --out also writes it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.amazon.metadata import item_sentence
from pipeline.text_encoder import encode_sentences, load_text_model, resolve_device

WORDS = (
    "stapler paper clip binder folder ink pen pencil marker eraser notebook label tape desk organizer tray "
    "file cabinet printer toner cartridge envelope sticky note pad calendar planner ruler scissors glue "
    "highlighter whiteboard board cork pin clipboard laminator shredder calculator keyboard mouse chair "
    "lamp storage box card index divider sheet pack set of assorted colors black blue red green yellow "
    "durable heavy duty premium quality professional compact portable ergonomic adjustable refillable "
    "recycled acid free smooth writing fine point medium bold quick drying waterproof archival safe for "
    "home office school use holds up to pages with easy loading and a non slip base this product is "
    "designed to make your work easier the sturdy metal construction lasts for years includes inch cm mm"
).split()
CATEGORIES = ["Office Products", "Office & School Supplies", "Desk Accessories", "Writing Instruments",
              "Paper", "Filing Products", "Labels", "Binders", "Staplers & Punches"]


def make_texts(n: int, seed: int) -> list[str]:
    """n MMRec-style item sentences from seeded random metadata records."""
    rng = np.random.default_rng(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS, size=k))

    texts = []
    for _ in range(n):
        record = {
            "title": words(int(rng.integers(6, 21))).title(),
            "brand": words(int(rng.integers(1, 3))).title(),
            "categories": [list(rng.choice(CATEGORIES, size=int(rng.integers(2, 5)), replace=False))],
            "description": words(int(min(400, max(5, rng.lognormal(np.log(90), 0.8))))),
        }
        texts.append(item_sentence(record))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="number of item texts")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64], help="sentences per batch (one run set each)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per batch size (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    texts = make_texts(args.n, args.seed)
    started = time.perf_counter()
    model = load_text_model(args.device)
    load_s = time.perf_counter() - started
    limit = model.max_seq_length
    tokens = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
    encode_sentences(model, texts[:256], 64)  # warm-up: first-call allocations and kernel selection
    runs = {}
    for batch_size in args.batch_size:
        seconds, cpu_seconds = [], []
        for _ in range(args.repeats):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            encode_sentences(model, texts, batch_size)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - start_cpu)
        runs[str(batch_size)] = {
            "seconds": [round(s, 2) for s in seconds],
            "median_s": round(statistics.median(seconds), 2),
            "texts_per_s": round(args.n / statistics.median(seconds), 1),
            # CPU seconds of all this process's threads: the work, whatever else the machine runs
            "cpu_seconds": [round(s, 2) for s in cpu_seconds],
        }
    report = {
        "texts": args.n,
        "mean_tokens": round(float(np.mean(tokens)), 1),
        "share_at_token_limit": round(float(np.mean(np.array(tokens) >= limit)), 3),
        "device": resolve_device(args.device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "model_load_s": round(load_s, 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "runs_by_batch_size": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
