"""The floor of a training epoch: the matrix products each model's definition cannot avoid.

For every base model and DVIB variant a function counts the floating-point operations of the
products one epoch needs at the very least, by the model's definition in docs/method.md (not by how our
code happens to compute it), so that `flops / measured matmul rate` is a time no implementation on
this machine can beat. Rules:

- a dense product [m, k] @ [k, n] costs 2·m·k·n forward; the backward pass adds the same again
  for the gradient of each operand that needs one (a trainable weight; an input that depends on
  parameters). A constant input (frozen raw features, a fixed graph) gets no gradient;
- a sparse product A @ X with nnz stored entries and X of width d costs 2·nnz·d, plus 2·nnz·d
  for the gradient of X, plus 2·nnz·d when the edge weights themselves are trained (GRCN);
- only rows the loss needs are counted: plain VBPR needs the content projection of the batch's
  distinct positive and negative items only (their expected number under random batches and
  uniform negatives, `Workload.distinct_items`), while a DVIB consistency view over all items
  (B × I score rows) or a VIB term over every item's hidden row needs every item; graph models
  need every node, every batch, because a node's representation depends on its neighbours;
- products that are shared between passes are counted once (DVIB's clean and noisy VBPR score
  matrices share the id half ⟨θ_u, γ_i⟩; the pipeline recomputes it, which measured faster);
- not counted: element-wise work (activations, softmax, the divergence, normalisations), sampling,
  gathers, and the optimiser. The optimiser's memory traffic is a separate floor in the benchmark
  (bytes Adam must touch / measured bandwidth).

Each function returns a `FlopCount` with named parts, per epoch; the benchmark prints the total.
`params` is the model's params.yaml block plus `noise_hidden` (the dvib section's). A base model
without an entry here has no floor: `epoch_floor` and `evaluation_floor` return None and the
benchmark prints its timings without one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

# Depths the models' definitions fix (docs/method.md, "The five base models"), not params.yaml settings.
MMGCN_LAYERS = 3  # MMGCN always runs three layers (its n_layers setting is ignored upstream)
GRCN_ID_LAYERS = 2


@dataclass(frozen=True)
class Workload:
    """The sizes an epoch's cost depends on, read off the benchmark's dataset and graphs."""

    n_users: int
    n_items: int
    n_train: int  # train rows (with duplicates): the batches of an epoch
    n_pairs: int  # distinct train (user, item) pairs: Â and the undirected graph have 2·n_pairs entries
    n_mm_adj: int  # stored entries of FREEDOM's mixed kNN item graph (image and text union)
    image_dim: int
    text_dim: int
    batch_size: int
    # Train rows per user and per item (those with at least one): expected distinct rows of a batch.
    user_counts: tuple[int, ...] = field(default=(), repr=False)
    item_counts: tuple[int, ...] = field(default=(), repr=False)

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    def distinct_users(self, b: int) -> float:
        """Expected number of distinct users among b train rows drawn at random (b if unknown)."""
        return self._expected_distinct(self.user_counts, b, 1.0) if self.user_counts else float(b)

    def distinct_items(self, b: int, negatives: bool) -> float:
        """Expected number of distinct items among b random train rows' positives and, with
        `negatives`, b negatives drawn uniformly from the train items (min(b or 2b, I) if unknown)."""
        if not self.item_counts:
            return float(min(b * (1 + negatives), self.n_items))
        missed_by_negatives = (1.0 - 1.0 / len(self.item_counts)) ** b if negatives else 1.0
        return self._expected_distinct(self.item_counts, b, missed_by_negatives)

    def _expected_distinct(self, counts: tuple[int, ...], b: int, missed_otherwise: float) -> float:
        # A user or item with c of the n train rows is in none of b random rows with probability ≈ (1 - b/n)^c.
        keep = math.log1p(-b / self.n_train) if b < self.n_train else -math.inf
        return sum(1.0 - math.exp(c * keep) * missed_otherwise for c in counts)

    def batch_sizes(self) -> list[tuple[int, int]]:
        """(rows in the batch, how many such batches) for one epoch: full batches and the remainder."""
        full, rest = divmod(self.n_train, self.batch_size)
        return [(self.batch_size, full)] + ([(rest, 1)] if rest else [])


@dataclass
class FlopCount:
    """Floating-point operations by named part (per epoch once `epoch_floor` has summed the batches)."""

    parts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, flops: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + flops

    def dense(self, name: str, m: float, k: int, n: int, *, grad_input: bool, grad_weight: bool = True) -> None:
        """[m, k] @ [k, n] (m may be an expected row count): forward, plus one product per operand
        that needs a gradient."""
        self.add(name, 2.0 * m * k * n * (1 + grad_input + grad_weight))

    def sparse(self, name: str, nnz: int, width: int, *, grad_input: bool, grad_values: bool = False) -> None:
        """A @ X with nnz entries in A and X of `width` columns: forward plus the gradients needed."""
        self.add(name, 2.0 * nnz * width * (1 + grad_input + grad_values))

    def mlp(self, name: str, rows: int, dims: tuple[int, ...], *, grad_input: bool) -> None:
        """A stack of Linear layers dims[0] -> dims[1] -> ... on `rows` rows (inner inputs need grads)."""
        for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
            self.dense(name, rows, k, n, grad_input=grad_input or i > 0)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def scaled(self, factor: int) -> "FlopCount":
        return FlopCount({k: v * factor for k, v in self.parts.items()})

    def merged(self, other: "FlopCount") -> "FlopCount":
        out = FlopCount(dict(self.parts))
        for k, v in other.parts.items():
            out.add(k, v)
        return out


def vbpr_batch(w: Workload, b: int, variant: str | None, params: Mapping) -> FlopCount:
    """VBPR: content projection W f_i (constant features: forward + weight gradient) of the batch's
    distinct positive/negative items (plain) or of all items (DVIB views need B × I scores); with
    DVIB the clean and noisy score matrices θ_u·[γ; c]ᵀ share the id half, so three B × I × d products
    (id, clean content, noisy content), each with gradients for both operands."""
    d = params["embedding_size"]
    features = w.image_dim + w.text_dim
    f = FlopCount()
    if variant is None:
        f.dense("content projection (batch items)", w.distinct_items(b, negatives=True), features, d, grad_input=False)
        f.add("pos/neg scores", 2.0 * 2 * b * 2 * d * 3)
        return f
    f.dense("content projection (all items)", w.n_items, features, d, grad_input=False)
    for part in ("id", "clean content", "noisy content"):
        f.dense(f"B×I score view ({part} half)", b, d, w.n_items, grad_input=True)
    if variant == "a":
        f.mlp("noise network", w.n_items, (d, *params["noise_hidden"], 1), grad_input=True)
    return f


def mmgcn_batch(w: Workload, b: int, variant: str | None, params: Mapping) -> FlopCount:
    """MMGCN: per modality a 3-layer GCN over all N nodes (mean aggregation over the undirected
    edges, after the layer's d_m×d_m product), image first projected 4096 -> 256 over all items;
    DVIB runs both GCNs again on noisy raw features and adds two B × I × 64 score views."""
    d = params["embedding_size"]
    image_width = params["image_latent_dim"]
    n, edges = w.n_nodes, 2 * w.n_pairs  # repeated rows merge into one weighted entry
    f = FlopCount()
    passes = ("clean",) if variant is None else ("clean", "noisy")
    for p in passes:
        # Noisy features depend on σ's network in variant a, so the projection then needs their gradient.
        f.dense(f"image projection ({p})", w.n_items, w.image_dim, image_width,
                grad_input=(p == "noisy" and variant == "a"))
        for modality, width in (("image", image_width), ("text", w.text_dim)):
            # The text GCN's first input [P_t ; raw text] is constant unless noise comes from a network.
            first_grad = modality == "image" or (p == "noisy" and variant == "a")
            for layer in range(MMGCN_LAYERS):
                d_in = width if layer == 0 else d
                grad_in = first_grad if layer == 0 else True
                name = f"{modality} GCN ({p})"
                f.dense(name, n, d_in, d_in, grad_input=grad_in)
                f.sparse(name, edges, d_in, grad_input=True)
                f.dense(name, n, d_in, d, grad_input=grad_in)
                f.dense(name, n, d_in + d, d, grad_input=True)
    f.add("pos/neg scores", 2.0 * 2 * b * d * 3)
    if variant is not None:
        for p in passes:
            f.dense(f"B×I score view ({p})", b, d, w.n_items, grad_input=True)
    if variant == "a":
        image_hidden = params["image_noise_hidden"]
        text_hidden = params["text_noise_hidden"]
        f.mlp("image noise network", w.n_items, (w.image_dim, *image_hidden, 1), grad_input=False)
        f.mlp("text noise network", w.n_items, (w.text_dim, *text_hidden, 1), grad_input=False)
    return f


def grcn_batch(w: Workload, b: int, variant: str | None, params: Mapping) -> FlopCount:
    """GRCN: per modality an MLP feat -> 64 over all items and a graph attention over the
    undirected edges (scores ⟨x_tgt, x_src⟩ and the α-weighted sum, gradients through both); the id
    channel propagates twice with trained edge weights; DVIB adds two B × I × 192 views, and GRCNc
    runs the id channel again on the noisy edge weights."""
    d = params["embedding_size"]
    edges = 2 * w.n_pairs
    f = FlopCount()
    for modality, dim in (("image", w.image_dim), ("text", w.text_dim)):
        f.dense(f"{modality} MLP", w.n_items, dim, d, grad_input=False)
        f.add(f"{modality} attention scores", 2.0 * edges * d * 3)
        f.sparse(f"{modality} attention aggregation", edges, d, grad_input=True, grad_values=True)
    id_passes = 2 if variant == "c" else 1
    for _ in range(id_passes):
        for _layer in range(GRCN_ID_LAYERS):
            f.sparse("id channel propagation", edges, d, grad_input=True, grad_values=True)
    f.add("pos/neg scores", 2.0 * 2 * b * 3 * d * 3)
    if variant is not None:
        for p in ("clean", "noisy"):
            f.dense(f"B×I score view ({p})", b, 3 * d, w.n_items, grad_input=True)
    if variant == "a":
        f.mlp("noise network", w.n_nodes, (2 * d, *params["noise_hidden"], 1),
              grad_input=True)
    return f


def bm3_batch(w: Workload, b: int, variant: str | None, params: Mapping) -> FlopCount:
    """BM3: LightGCN over Â (all nodes, n_layers), the trainable raw features projected for the
    batch's distinct items (its losses index the batch) or, in variant a, for every item (the VIB
    term and its noise network read every item's T and V), and the 64×64 predictor on the batch's
    distinct users and items and their T and V rows; DVIB predicts the noisy T', V' rows again."""
    d = params["embedding_size"]
    layers = params["n_layers"]
    users, items = w.distinct_users(b), w.distinct_items(b, negatives=False)
    f = FlopCount()
    for _ in range(layers):
        f.sparse("LightGCN propagation", 2 * w.n_pairs, d, grad_input=True)
    projected, scope = (w.n_items, "all items") if variant == "a" else (items, "batch items")
    f.dense(f"image projection ({scope})", projected, w.image_dim, d, grad_input=True)
    f.dense(f"text projection ({scope})", projected, w.text_dim, d, grad_input=True)
    f.dense("predictor (users)", users, d, d, grad_input=True)
    feature_predictions = 2 if variant is None else 4
    for _ in range(1 + feature_predictions):
        f.dense("predictor (items, T, V)", items, d, d, grad_input=True)
    if variant == "a":
        f.mlp("noise network", 2 * w.n_items, (d, *params["noise_hidden"], 1),
              grad_input=True)
    return f


def freedom_batch(w: Workload, b: int, variant: str | None, params: Mapping) -> FlopCount:
    """FREEDOM: one propagation over the frozen kNN item graph, n_ui_layers LightGCN layers over
    the pruned graph (a `1 - dropout` share of Â's entries), the trainable raw features projected
    for the batch's distinct positive and negative items (plain; none when reg_weight is 0, as the
    feature terms then vanish) or for all items (DVIB compares all items' T and T')."""
    d = params["embedding_size"]
    layers = params["n_ui_layers"]
    dropout = params["dropout"]
    kept = 2 * int(w.n_pairs * (1 - dropout))
    f = FlopCount()
    f.sparse("kNN item graph", w.n_mm_adj, d, grad_input=True)
    for _ in range(layers):
        f.sparse("LightGCN propagation (pruned graph)", kept, d, grad_input=True)
    if variant is None and params["reg_weight"] == 0:
        return f
    rows = w.distinct_items(b, negatives=True) if variant is None else w.n_items
    scope = "batch items" if variant is None else "all items"
    f.dense(f"image projection ({scope})", rows, w.image_dim, d, grad_input=True)
    f.dense(f"text projection ({scope})", rows, w.text_dim, d, grad_input=True)
    if variant == "a":
        for modality in ("image", "text"):
            f.mlp(f"{modality} noise network", w.n_items, (d, *params["noise_hidden"], 1),
                  grad_input=True)
    return f


BATCH_FLOORS: dict[str, Callable[[Workload, int, str | None, Mapping], FlopCount]] = {
    "VBPR": vbpr_batch,
    "MMGCN": mmgcn_batch,
    "GRCN": grcn_batch,
    "BM3": bm3_batch,
    "FREEDOM": freedom_batch,
}

# Width of the vectors whose inner products give the full-sort scores, in units of embedding_size.
SCORE_WIDTH = {"VBPR": 2, "MMGCN": 1, "GRCN": 3, "BM3": 1, "FREEDOM": 1}


def epoch_floor(base: str, variant: str | None, w: Workload, params: Mapping) -> FlopCount | None:
    """Unavoidable matrix-product FLOPs of one training epoch of `base`+`variant`; None for a base without a floor."""
    batch = BATCH_FLOORS.get(base)
    if batch is None:
        return None
    total = FlopCount()
    for rows, count in w.batch_sizes():
        total = total.merged(batch(w, rows, variant, params).scaled(count))
    return total


def evaluation_floor(base: str, n_eval_users: int, w: Workload, params: Mapping) -> float | None:
    """FLOPs of the full-sort score product of one split: 2 · users · items · score width; None for a
    base without a floor."""
    if base not in SCORE_WIDTH:
        return None
    d = params["embedding_size"]
    return 2.0 * n_eval_users * w.n_items * SCORE_WIDTH[base] * d


def adam_bytes(n_parameters: int) -> float:
    """Bytes one dense Adam step must move at least: read parameter, gradient and both moments,
    write parameter and both moments (7 float32 values per parameter)."""
    return 7.0 * 4 * n_parameters
