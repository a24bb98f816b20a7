"""Micro-benchmarks of the speed levers, each as before/after on Baby-sized shapes (19,445 users,
7,050 items, batch 2048, 4096-d image + 384-d text features, d = 64).

Usage, from the project root:
  .venv/bin/python benchmarks/levers.py                 # every lever
  .venv/bin/python benchmarks/levers.py --only divergence adam --repeats 7

Each lever runs its variants interleaved, --repeats times, and reports the minimum and median
seconds (the minimum is the least disturbed by other processes on a shared machine). "before" is
the computation as it was written before the change (reproduced here), "after" what the pipeline
does now. On a busy machine use `--clock cpu --threads 1` (CPU seconds of one thread: the work,
not the wait). Levers:
  divergence  JS / reference divergence over a B × I score view, forward + backward: autograd
              through the formula vs the hand-written backward in pipeline/models/divergences.py
  vbpr        plain VBPR loss, forward + backward: every item's content projected vs only the
              batch's distinct items (pipeline/models/vbpr.py)
  vbpr_views  VBPR's clean + noisy B × I views, forward + backward: two users @ [γ ; c]ᵀ products
              (what the pipeline does) vs the id half ⟨θ_u, γ⟩ computed once and shared (a quarter
              fewer FLOPs, but measured slower: rejected)
  threads     torch.mm and the divergence with 1 thread vs torch's default
  denormals   exp/mul over a tensor full of subnormal results, flush-to-zero off vs on
  adam        one Adam step over BM3/FREEDOM-sized trainable parameters (~33.6 M): torch's default
              implementation vs foreach vs fused
  gather      a row gather from a trainable table, forward + backward: x[index] (backward: an
              accumulating index_put) vs take_rows (index_select; backward: index_add)
  exp         row probabilities of peaked B × I score rows: exp(log_softmax) (CPU exp's slow path
              for results under the smallest normal float) vs softmax
  topk        the top 50 of a 4,096-user evaluation batch's scores: torch.topk vs
              pipeline.evaluation.top_k_columns (grouped pre-selection, same values)
  spmm        Â @ X (N × N, 2·pairs entries, X [N, 64]) with COO vs CSR layout
  malloc      out-of-place element-wise ops on a B × I tensor and the JS divergence, forward +
              backward, in a fresh process each: glibc's default (every large tensor a fresh mmap)
              vs pipeline.runtime.reuse_freed_memory (freed memory kept for reuse)
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.models.divergences import js_divergence, upstream_divergence  # noqa: E402
from pipeline.evaluation import top_k_columns  # noqa: E402
from pipeline.models.base import take_rows  # noqa: E402
from pipeline.runtime import reuse_freed_memory  # noqa: E402

USERS, ITEMS, BATCH, IMAGE, TEXT, D = 19445, 7050, 2048, 4096, 384, 64
PAIRS = 128_000  # distinct train pairs of the Baby-sized set (about 0.8 × 160,000)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        tick = clock()
        fn()
        out.append(clock() - tick)
    return out


def compare(variants: dict, repeats: int) -> dict:
    """Run each variant once to warm up, then all of them interleaved `repeats` times."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name] += timed(fn, 1)
    return {name: {"min_s": min(t), "median_s": statistics.median(t)} for name, t in times.items()}


# ---------------------------------------------------------------- the "before" computations


def js_autograd(p_logits, q_logits):
    """The divergence as it was: autograd through log-space formulas."""
    log_p, log_q = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl = log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m)
    return 0.5 * kl.sum() / p_logits.shape[0]


def upstream_autograd(p_logits, q_logits):
    log_p, log_q = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    log_p2, log_q2 = F.log_softmax(log_p.exp(), -1), F.log_softmax(log_q.exp(), -1)
    kl = log_m.exp() * (2.0 * log_m - log_p2 - log_q2)
    return 0.5 * kl.sum() / p_logits.shape[0]


# ---------------------------------------------------------------- levers


def lever_divergence(g, repeats):
    p = torch.randn(BATCH, ITEMS, generator=g).requires_grad_()
    q = (p.detach() + 0.01 * torch.randn(BATCH, ITEMS, generator=g)).requires_grad_()

    def run(fn):
        return lambda: fn(p, q).backward()

    return compare({"js before (autograd)": run(js_autograd), "js after (hand-written backward)": run(js_divergence),
                    "upstream before (autograd)": run(upstream_autograd),
                    "upstream after (hand-written backward)": run(upstream_divergence)}, repeats)


def _vbpr_tensors(g):
    text = torch.randn(ITEMS, TEXT, generator=g)
    image = torch.randn(ITEMS, IMAGE, generator=g)
    weight = (0.01 * torch.randn(D, TEXT + IMAGE, generator=g)).requires_grad_()
    bias = torch.zeros(D, requires_grad=True)
    theta = (0.1 * torch.randn(USERS, 2 * D, generator=g)).requires_grad_()
    gamma = (0.1 * torch.randn(ITEMS, D, generator=g)).requires_grad_()
    users = torch.randint(USERS, (BATCH,), generator=g)
    pos = torch.randint(ITEMS, (BATCH,), generator=g)
    neg = torch.randint(ITEMS, (BATCH,), generator=g)
    return text, image, weight, bias, theta, gamma, users, pos, neg


def _content(text, image, weight, bias):
    return torch.addmm(bias, text, weight[:, :TEXT].T) + image @ weight[:, TEXT:].T


def lever_vbpr(g, repeats):
    text, image, weight, bias, theta, gamma, users, pos, neg = _vbpr_tensors(g)

    def loss(items_content, pos_rows, neg_rows):
        u = theta[users]
        p = torch.cat([gamma[pos], items_content[pos_rows]], 1)
        n = torch.cat([gamma[neg], items_content[neg_rows]], 1)
        return -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()

    def before():
        loss(_content(text, image, weight, bias), pos, neg).backward()

    def after():
        items, rows = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        loss(_content(text[items], image[items], weight, bias), rows[:BATCH], rows[BATCH:]).backward()

    out = compare({"all items projected (before)": before, "batch items projected (after)": after}, repeats)
    out["distinct items per batch"] = int(torch.unique(torch.cat([pos, neg])).numel())
    return out


def lever_vbpr_views(g, repeats):
    text, image, weight, bias, theta, gamma, users, *_ = _vbpr_tensors(g)
    content = _content(text, image, weight, bias).detach().requires_grad_()
    noisy = (content.detach() + 1e-3 * torch.randn(content.shape, generator=g)).requires_grad_()

    def before():
        u = theta[users]
        views = [u @ torch.cat([gamma, c], 1).T for c in (content, noisy)]
        (views[0].sum() + 0.5 * views[1].sum()).backward()

    def after():
        u = theta[users]
        id_scores = u[:, :D] @ gamma.T
        views = [torch.addmm(id_scores, u[:, D:], c.T) for c in (content, noisy)]
        (views[0].sum() + 0.5 * views[1].sum()).backward()

    return compare({"two full products (kept)": before, "shared id half (rejected)": after}, repeats)


def lever_threads(g, repeats):
    a, b = torch.randn(2048, 4096, generator=g), torch.randn(4096, 256, generator=g)
    p = torch.randn(BATCH, ITEMS, generator=g).requires_grad_()
    q = torch.randn(BATCH, ITEMS, generator=g).requires_grad_()
    default = torch.get_num_threads()
    out = {"torch default threads": default}
    for n in sorted({1, default}):
        torch.set_num_threads(n)
        res = compare({"mm 2048x4096 @ 4096x256": lambda: torch.mm(a, b),
                       "js divergence fwd+bwd": lambda: js_divergence(p, q).backward()}, repeats)
        out[f"{n} thread(s)"] = res
    torch.set_num_threads(default)
    return out


def lever_denormals(g, repeats):
    # Values around 1e-20 squared land in the subnormal range (< 1.2e-38).
    x = torch.rand(BATCH, ITEMS, generator=g) * 1e-20
    out = {}
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        res = compare({"x * x (subnormal results)": lambda: x * x,
                       "(x * x) * 3 (subnormal inputs)": lambda: (x * x) * 3.0}, repeats)
        out["flush" if flush else "keep"] = res
    torch.set_flush_denormal(True)
    return out


def lever_adam(g, repeats):
    def params():
        shapes = [(ITEMS, IMAGE), (ITEMS, TEXT), (USERS, D), (ITEMS, D), (D, IMAGE), (D,), (D, TEXT), (D,)]
        ps = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
        for p in ps:
            p.grad = 1e-3 * torch.randn(p.shape, generator=g)
        return ps

    variants = {}
    for name, kwargs in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        try:
            opt = torch.optim.Adam(params(), lr=1e-3, **kwargs)
        except (RuntimeError, ValueError) as exc:
            variants[name] = None
            print(f"adam {name}: unavailable ({exc})", file=sys.stderr)
            continue
        variants[name] = opt.step
    n_params = sum(p.numel() for p in params())
    out = compare({k: v for k, v in variants.items() if v is not None}, repeats)
    out["parameters"] = n_params
    return out


def lever_gather(g, repeats):
    """Forward + backward of a row gather from a trainable table: FREEDOM/BM3's batch items from the
    raw image features, and MMGCN/GRCN's batch nodes from the node representation."""
    features = torch.randn(ITEMS, IMAGE, generator=g).requires_grad_()
    items = torch.unique(torch.randint(ITEMS, (2 * BATCH,), generator=g))
    rep = torch.randn(USERS + ITEMS, 3 * D, generator=g).requires_grad_()
    nodes = torch.randint(USERS + ITEMS, (3 * BATCH,), generator=g)

    def run(table, index, gather):
        def step():
            table.grad = None
            gather(table, index).sum().backward()
        return step

    def advanced(table, index):
        return table[index]

    return compare({"features before (x[index])": run(features, items, advanced),
                    "features after (take_rows)": run(features, items, take_rows),
                    "nodes before (x[index])": run(rep, nodes, advanced),
                    "nodes after (take_rows)": run(rep, nodes, take_rows)}, repeats)


def lever_exp(g, repeats):
    """Row probabilities of peaked B × I score rows (most log-probabilities under -87.3, as in
    trained models' views): exp(log_softmax) vs softmax, and the divergences on such rows."""
    p = (40.0 * torch.randn(BATCH, ITEMS, generator=g)).requires_grad_()
    q = (p.detach() + torch.randn(BATCH, ITEMS, generator=g)).requires_grad_()
    rows = p.detach()
    share = float((F.log_softmax(rows, -1) < -87.3).float().mean())
    print(f"  exp lever: {share:.0%} of the log-probabilities are under -87.3", file=sys.stderr)
    return compare({"probabilities before (log_softmax.exp)": lambda: F.log_softmax(rows, -1).exp(),
                    "probabilities after (softmax)": lambda: F.softmax(rows, -1),
                    "js divergence fwd+bwd (after)": lambda: js_divergence(p, q).backward(),
                    "upstream divergence fwd+bwd (after)": lambda: upstream_divergence(p, q).backward()},
                   repeats)


def lever_topk(g, repeats):
    """The top 50 of one evaluation batch's scores (4,096 users × every item, train items masked):
    torch.topk on every column vs top_k_columns' grouped pre-selection (same values)."""
    users, items = torch.randn(4096, D, generator=g), torch.randn(ITEMS, D, generator=g)
    scores = users @ (items + torch.randn(1, D, generator=g)).T
    scores[torch.rand(scores.shape, generator=g) < 0.001] = -torch.inf
    if not torch.equal(scores.topk(50, dim=1).values, scores.gather(1, top_k_columns(scores, 50))):
        raise AssertionError("top_k_columns selected other values than torch.topk")
    return compare({"before (torch.topk)": lambda: scores.topk(50, dim=1),
                    "after (top_k_columns)": lambda: top_k_columns(scores, 50)}, repeats)


def lever_spmm(g, repeats):
    n = USERS + ITEMS
    u = torch.randint(USERS, (PAIRS,), generator=g)
    i = torch.randint(ITEMS, (PAIRS,), generator=g) + USERS
    idx = torch.stack([torch.cat([u, i]), torch.cat([i, u])])
    coo = torch.sparse_coo_tensor(idx, torch.rand(2 * PAIRS, generator=g), (n, n), check_invariants=True).coalesce()
    csr = coo.to_sparse_csr()
    x = torch.randn(n, D, generator=g)
    return compare({"COO @ X": lambda: torch.sparse.mm(coo, x), "CSR @ X": lambda: csr @ x}, repeats)


def malloc_probe(repeats: int) -> dict:
    """The `malloc` lever's measurements in this process (run in a fresh process per setting)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(BATCH, ITEMS, generator=g)
    b = torch.randn(BATCH, ITEMS, generator=g)
    pa, pb = a.clone().requires_grad_(), b.clone().requires_grad_()
    return compare({"a + b (B x I)": lambda: a + b, "exp(a)": lambda: a.exp(),
                    "js divergence fwd+bwd": lambda: js_divergence(pa, pb).backward()}, repeats)


def lever_malloc(g, repeats):
    out = {}
    for setting in ("system", "reuse"):
        command = [sys.executable, str(Path(__file__).resolve()), "--malloc-probe", setting,
                   "--repeats", str(repeats), "--clock", "cpu" if clock is time.process_time else "wall",
                   "--threads", str(torch.get_num_threads())]
        proc = subprocess.run(command, capture_output=True, text=True, check=True)
        out[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


LEVERS = {
    "divergence": lever_divergence,
    "vbpr": lever_vbpr,
    "vbpr_views": lever_vbpr_views,
    "threads": lever_threads,
    "denormals": lever_denormals,
    "adam": lever_adam,
    "spmm": lever_spmm,
    "gather": lever_gather,
    "exp": lever_exp,
    "topk": lever_topk,
    "malloc": lever_malloc,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(LEVERS), help="levers to run (default all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                        help="wall: elapsed seconds; cpu: this process's CPU seconds (all threads), which "
                             "excludes time spent waiting for a busy CPU: use it with --threads 1 on a shared machine")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "levers.json")
    parser.add_argument("--malloc-probe", choices=("system", "reuse"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global clock
    clock = CLOCK[args.clock]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # the trainer's setting (configure_runtime)
    if args.malloc_probe:  # child of the `malloc` lever
        if args.malloc_probe == "reuse":
            reuse_freed_memory()
        print(json.dumps(malloc_probe(args.repeats)))
        return 0
    g = torch.Generator().manual_seed(0)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "clock": args.clock}
    for name in args.only or LEVERS:
        print(f"{name} ...", file=sys.stderr, flush=True)
        results[name] = LEVERS[name](g, args.repeats)
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
