"""A seeded generator of MMRec-format datasets with planted structure.

Users and items get latent factors; each user's interactions are drawn without replacement from
a softmax over ⟨user, item⟩ affinities, so a model can learn them. Each modality observes the item
factors through its own random linear map plus Gaussian noise, with knobs for modality noise,
redundant dimensions (copies of other dimensions) and a fraction of corrupted items (features
replaced by pure noise), so that robustness to noisy and redundant modalities can be studied.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import SyntheticConfig
from pipeline.dataset import TEST, TRAIN, VALID, write_mmrec


def mmrec_split_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """x_label values for one user's n interactions, by the MMRec rules, in random order."""
    if n < 10:
        n_valid, n_test = 1, 1
    else:
        vt = int(0.2 * n)
        n_valid = vt // 2
        n_test = vt - n_valid
    labels = np.full(n, TRAIN, dtype=np.int64)
    labels[n - n_valid - n_test : n - n_test] = VALID
    labels[n - n_test :] = TEST
    return labels[rng.permutation(n)]


def _modality_features(
    item_factors: np.ndarray, dim: int, cfg: SyntheticConfig, rng: np.random.Generator
) -> np.ndarray:
    n_items, latent = item_factors.shape
    n_redundant = int(round(cfg.redundant_fraction * dim))
    n_informative = dim - n_redundant
    projection = rng.standard_normal((latent, n_informative)) / np.sqrt(latent)
    informative = item_factors @ projection
    informative += cfg.modality_noise * rng.standard_normal(informative.shape)
    # Redundant dimensions: exact copies of informative ones (what dedup/bottlenecks should drop).
    copies = informative[:, rng.integers(0, n_informative, size=n_redundant)]
    features = np.concatenate([informative, copies], axis=1)[:, rng.permutation(dim)]
    n_corrupt = int(round(cfg.corrupted_fraction * n_items))
    if n_corrupt:
        corrupt = rng.choice(n_items, size=n_corrupt, replace=False)
        features[corrupt] = rng.standard_normal((n_corrupt, dim)) * features.std()
    return features.astype(np.float32)


def generate_synthetic(cfg: SyntheticConfig, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Generate (interactions frame, image features, text features) for the given config and seed."""
    rng = np.random.default_rng(seed)
    user_factors = rng.standard_normal((cfg.n_users, cfg.latent_dim))
    item_factors = rng.standard_normal((cfg.n_items, cfg.latent_dim))
    popularity = 0.5 * rng.standard_normal(cfg.n_items)
    affinity = (user_factors @ item_factors.T) / (np.sqrt(cfg.latent_dim) * cfg.preference_temperature) + popularity

    extra = rng.poisson(max(cfg.mean_interactions - cfg.min_interactions, 0.0), size=cfg.n_users)
    counts = np.minimum(cfg.min_interactions + extra, cfg.n_items // 2)
    # Sampling without replacement from softmax(affinity): Gumbel top-k, one row per user.
    keys = affinity + rng.gumbel(size=affinity.shape)
    order = np.argsort(-keys, axis=1, kind="stable")
    users = np.repeat(np.arange(cfg.n_users), counts)
    items = np.concatenate([order[u, :c] for u, c in enumerate(counts)])
    labels = np.concatenate([mmrec_split_labels(int(c), rng) for c in counts])

    # Re-index items in order of first appearance, as the released data was (ids contiguous from 0).
    _, first = np.unique(items, return_index=True)
    seen = items[np.sort(first)]
    new_id = np.full(cfg.n_items, -1, dtype=np.int64)
    new_id[seen] = np.arange(len(seen))
    item_factors = item_factors[seen]
    items = new_id[items]

    frame = pd.DataFrame(
        {
            "userID": users,
            "itemID": items,
            "rating": 5.0,
            "timestamp": np.arange(len(users), dtype=np.int64),
            "x_label": labels,
        }
    )
    image = _modality_features(item_factors, cfg.image_dim, cfg, rng)
    text = _modality_features(item_factors, cfg.text_dim, cfg, rng)
    return frame, image, text


def write_synthetic(folder, cfg: SyntheticConfig, seed: int) -> None:
    """Generate the synthetic dataset and write it as an MMRec-format folder."""
    frame, image, text = generate_synthetic(cfg, seed)
    write_mmrec(folder, frame, image, text)
