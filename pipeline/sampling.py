"""Uniform negative sampling without Python loops (docs/method.md, "Training protocol")."""
from __future__ import annotations

import torch

from pipeline.dataset import Split


class NegativeSampler:
    """Draws, for each (user, positive) row, one item from the train items that the user has not
    interacted with in train; collisions are redrawn until none remain."""

    def __init__(self, train: Split, n_items: int, device):
        users = torch.as_tensor(train.users, dtype=torch.long, device=device)
        items = torch.as_tensor(train.items, dtype=torch.long, device=device)
        self.n_items = n_items
        self.positive_keys = torch.unique(users * n_items + items)  # sorted
        self.candidates = torch.unique(items)  # items that appear in the train split

    def _is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.n_items + items
        pos = torch.searchsorted(self.positive_keys, keys).clamp_max(len(self.positive_keys) - 1)
        return self.positive_keys[pos] == keys

    def sample(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One negative item per user in `users`."""
        draw = lambda n: self.candidates[  # noqa: E731
            torch.randint(len(self.candidates), (n,), generator=generator, device=self.candidates.device)
        ]
        negatives = draw(len(users))
        todo = self._is_positive(users, negatives).nonzero().squeeze(1)
        while len(todo):
            negatives[todo] = draw(len(todo))
            todo = todo[self._is_positive(users[todo], negatives[todo])]
        return negatives
