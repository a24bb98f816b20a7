"""Graph artefacts the graph models need, built once per dataset by the `graphs` stage (docs/method.md,
"The five base models").

- the symmetric normalised user–item adjacency Â = D^{-1/2} A D^{-1/2} over N = U + I nodes;
- the user→item edge index (one column per train row, duplicates kept);
- per-modality frozen kNN item graphs (FREEDOM), built block by block.

Artefacts are plain `.npy` files (byte-identical for identical inputs, so DVC sees no change).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.dataset import MODALITIES, InteractionData

GRAPH_FILES = ("norm_adj_index.npy", "norm_adj_value.npy", "edge_index.npy", *(f"knn_{m}.npy" for m in MODALITIES))


def build_norm_adj(n_users: int, n_items: int, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Â of the bipartite graph as (index [2, nnz], value [nnz]); repeated (u, i) pairs count once."""
    n_nodes = n_users + n_items
    pairs = np.unique(users.astype(np.int64) * n_items + items.astype(np.int64))
    u, i = pairs // n_items, pairs % n_items + n_users
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    degree = np.bincount(rows, minlength=n_nodes).astype(np.float64) + 1e-7
    inv_sqrt = degree ** -0.5
    values = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
    order = np.lexsort((cols, rows))
    return np.stack([rows[order], cols[order]]), values[order]


def build_edge_index(n_users: int, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """One-directional edges (u, U + i), one column per train row: shape [2, E]."""
    return np.stack([users.astype(np.int64), items.astype(np.int64) + n_users])


def build_knn_graph(features: np.ndarray, k: int, block_size: int = 2048) -> np.ndarray:
    """Indices [I, k] of each item's k most cosine-similar items (itself included).

    Rows are processed in blocks so the dense I×I similarity never exists at once; ties are broken
    towards the lower item index (stable sort), so the graph is deterministic.
    """
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(k, x.shape[0])
    out = np.empty((x.shape[0], k), dtype=np.int64)
    for start in range(0, x.shape[0], block_size):
        sim = x[start : start + block_size] @ x.T
        # Self-similarity is 1 up to rounding; pin it so an item is always its own neighbour.
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = float("inf")
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
        out[start : start + block_size] = order.numpy()
    return out


def knn_adjacency(knn: torch.Tensor, n_items: int) -> torch.Tensor:
    """Sparse [I, I] adjacency of a kNN graph, normalised r_i^{-1/2} r_j^{-1/2} with row sums r (= 1/k)."""
    k = knn.shape[1]
    rows = torch.arange(n_items, device=knn.device).repeat_interleave(k)
    cols = knn.reshape(-1)
    row_sum = torch.full((n_items,), float(k), device=knn.device) + 1e-7
    values = row_sum[rows].rsqrt() * row_sum[cols].rsqrt()
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (n_items, n_items), check_invariants=True
    ).coalesce()


def write_graphs(folder: str | Path, data: InteractionData, knn_k: int) -> None:
    """Build every graph artefact of a dataset and write it to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index, value = build_norm_adj(data.n_users, data.n_items, data.train.users, data.train.items)
    np.save(folder / "norm_adj_index.npy", index)
    np.save(folder / "norm_adj_value.npy", value)
    np.save(folder / "edge_index.npy", build_edge_index(data.n_users, data.train.users, data.train.items))
    for modality, features in data.features().items():
        np.save(folder / f"knn_{modality}.npy", build_knn_graph(features, knn_k))
    meta = {"n_users": data.n_users, "n_items": data.n_items, "knn_k": knn_k}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


@dataclass(frozen=True)
class Graphs:
    """Graph artefacts of one dataset as tensors on the training device."""

    n_users: int
    n_items: int
    norm_adj: torch.Tensor  # sparse [N, N]
    edge_index: torch.Tensor  # [2, E], users -> U + items
    knn: dict[str, torch.Tensor]  # modality -> [I, k]


def load_graphs(folder: str | Path, device: torch.device | str = "cpu") -> Graphs:
    """Load the artefacts written by `write_graphs`, checking that every file is present."""
    folder = Path(folder)
    missing = [f for f in (*GRAPH_FILES, "meta.json") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing graph artefact(s) {missing}; run `dvc repro graphs`")
    meta = json.loads((folder / "meta.json").read_text())
    n_nodes = meta["n_users"] + meta["n_items"]
    load = lambda name: torch.from_numpy(np.load(folder / name)).to(device)  # noqa: E731
    norm_adj = torch.sparse_coo_tensor(
        load("norm_adj_index.npy"), load("norm_adj_value.npy"), (n_nodes, n_nodes), check_invariants=True
    ).coalesce()
    return Graphs(
        n_users=meta["n_users"],
        n_items=meta["n_items"],
        norm_adj=norm_adj,
        edge_index=load("edge_index.npy"),
        knn={m: load(f"knn_{m}.npy") for m in MODALITIES},
    )


def graphs_in_memory(data: InteractionData, knn_k: int, device: torch.device | str = "cpu") -> Graphs:
    """Build the graph artefacts directly as tensors (tests, benchmarks)."""
    index, value = build_norm_adj(data.n_users, data.n_items, data.train.users, data.train.items)
    n_nodes = data.n_users + data.n_items
    return Graphs(
        n_users=data.n_users,
        n_items=data.n_items,
        norm_adj=torch.sparse_coo_tensor(
            torch.from_numpy(index), torch.from_numpy(value), (n_nodes, n_nodes), check_invariants=True
        )
        .coalesce()
        .to(device),
        edge_index=torch.from_numpy(build_edge_index(data.n_users, data.train.users, data.train.items)).to(device),
        knn={m: torch.from_numpy(build_knn_graph(f, knn_k)).to(device) for m, f in data.features().items()},
    )
