"""scikit-learn's bundled 8×8 digits as tensors."""

from __future__ import annotations

import torch


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``N×1×8×8`` float32 in [0, 1], labels int64 (1,797 images, classes 0–9)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(bunch.target, dtype=torch.int64)
