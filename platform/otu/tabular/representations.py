"""What the barycenter maps act on besides raw table features: a network's embeddings of digits,
and the estimate of E[Y | X] (the authors' conditional version)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from otu.tabular.metrics import LOGISTIC_MAX_ITER
from otu.tabular.networks import NUM_CLASSES, cache_entry, digits_network, embed
from otu.tabular.spec import TabularData, TabularModel
from otu.tabular.tables import Features, FeatureTask, digits_splits, standardise

INK_GROUPS = ("light", "heavy")
"""Names of the derived sensitive groups of digits (ink below / above the median image's)."""


def digits_feature_task(data: TabularData, model: TabularModel, seed: int, cache_dir: Path) -> FeatureTask:
    """Standardised penultimate-layer embeddings of the original digits classifier (trained on the
    training split); target: the digit; sensitive: ink."""
    splits = digits_splits(data, seed)
    net = digits_network("original", splits, model, seed, cache_entry(data, model, seed, cache_dir))
    emb = embed(net, splits.images).double().numpy()
    train, test = splits.train.numpy(), splits.test.numpy()
    labels = splits.labels.numpy()
    return FeatureTask(
        features=standardise(emb[train], emb[test]),
        y_train=labels[train],
        y_test=labels[test],
        z_train=splits.ink[train],
        z_test=splits.ink[test],
        classes=tuple(str(c) for c in range(NUM_CLASSES)),
        groups=INK_GROUPS,
        feature_names=tuple(f"h{i}" for i in range(emb.shape[1])),
    )


def prediction_scores(task: FeatureTask, c: float) -> Features:
    """Log-odds log(p_k / p_0), k = 1…K−1, of a logistic regression estimating E[Y | X] from the
    training features (K classes; for a binary target, the positive class's log-odds)."""
    model = LogisticRegression(C=c, max_iter=LOGISTIC_MAX_ITER).fit(task.features.train, task.y_train)

    def log_odds(x: np.ndarray) -> np.ndarray:
        logp = model.predict_log_proba(x)
        return logp[:, 1:] - logp[:, :1]

    return Features(log_odds(task.features.train), log_odds(task.features.test))
