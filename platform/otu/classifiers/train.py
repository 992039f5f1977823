"""Plain supervised training of a classifier (original models, oracles, evaluators) and its logits."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
) -> nn.Module:
    """Adam on cross-entropy for ``epochs`` passes over seeded shuffles; returns ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for idx in order.split(batch_size):
            if len(idx) < 2 and len(order) > 1:  # a batch of one breaks BatchNorm statistics
                continue
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[idx]), labels[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``images``, in batches."""
    model.eval()
    return torch.cat([model(chunk) for chunk in images.split(batch_size)])
