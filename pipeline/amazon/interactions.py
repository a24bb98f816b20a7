"""MMRec's interaction recipe: de-duplication, k-core to a fixed point, re-indexing, the per-user split."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.dataset import TEST, TRAIN, VALID, DatasetError

log = logging.getLogger(__name__)

SHORT_HISTORY = 10  # users with fewer interactions keep all but one validation and one test row for training


def drop_duplicate_reviews(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the first of reviews with the same user, item and timestamp."""
    kept = frame.drop_duplicates(subset=["user", "item", "timestamp"], keep="first")
    if len(kept) < len(frame):
        log.info("dropped %d duplicate reviews (same user, item and time)", len(frame) - len(kept))
    return kept


def k_core(frame: pd.DataFrame, k: int, source: Path) -> pd.DataFrame:
    """Drop users and items with fewer than k interactions, repeatedly, until none is left to drop."""
    rounds = 0
    while True:
        user_counts = frame["user"].map(frame["user"].value_counts())
        item_counts = frame["item"].map(frame["item"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            break
        frame = frame[keep]
        rounds += 1
    if frame.empty:
        raise DatasetError(
            f"{source}: the {k}-core is empty: no set of users and items has {k} or more reviews each; "
            f"use a larger review file or a smaller k_core"
        )
    log.info(
        "%d-core after %d rounds: %d interactions, %d users, %d items",
        k, rounds, len(frame), frame["user"].nunique(), frame["item"].nunique(),
    )
    return frame


def reindex(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Ids from 0 in order of first appearance; returns the frame with userID/itemID and the two id maps."""
    users = pd.unique(frame["user"])
    items = pd.unique(frame["item"])
    out = frame.assign(
        userID=frame["user"].map(pd.Series(np.arange(len(users)), index=users)),
        itemID=frame["item"].map(pd.Series(np.arange(len(items)), index=items)),
    )
    user_map = pd.DataFrame({"user_id": users, "userID": np.arange(len(users))})
    item_map = pd.DataFrame({"asin": items, "itemID": np.arange(len(items))})
    return out, user_map, item_map


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, valid, test) sizes of a history of n interactions, by MMRec's rule."""
    if n < SHORT_HISTORY:
        return n - 2, 1, 1
    held_out = int(n * 0.2)
    valid = held_out // 2
    return n - held_out, valid, held_out - valid


def split_by_time(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Label each user's interactions train, then valid, then test, oldest first; a seeded key orders equal times.

    Returns the .inter rows sorted by userID and time, with an x_label column.
    """
    tie_break = np.random.default_rng(seed).permutation(len(frame))
    ordered = frame.assign(_tie=tie_break).sort_values(["userID", "timestamp", "_tie"], kind="stable")
    sizes = ordered.groupby("userID", sort=True).size().to_numpy()
    labels = np.concatenate([
        np.repeat([TRAIN, VALID, TEST], split_counts(int(n))) for n in sizes
    ])
    return ordered.drop(columns="_tie").assign(x_label=labels).reset_index(drop=True)
