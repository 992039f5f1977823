"""What the barycenter maps act on besides raw table features: a network's embeddings of digits,
and the estimate of E[Y | X, Z] (the conditional version)."""

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
        seed=seed,
    )


def prediction_scores(task: FeatureTask, c: float, with_group: bool = True) -> Features:
    """Log-odds log(p_k / p_0), k = 1…K−1, of a logistic regression estimating E[Y | X, Z] (the
    one-hot group appended to the features; ``with_group=False``: E[Y | X]) on the training split
    (K classes; for a binary target, the positive class's log-odds).

    E[Y | X, Z]: the optimal L² outcome independent of Z is the W₂ barycenter of the laws of
    E[Y | X, Z] given Z = z (Chzhen et al. 2020; Le Gouic, Loubes & Rigollet 2020; Xu & Strohmer,
    JMLR 2023, whose result the conditional version of Xu & Strohmer 2025 builds on)."""

    def inputs(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        if not with_group:
            return x
        return np.hstack([x, np.eye(len(task.groups))[z]])

    train = inputs(task.features.train, task.z_train)
    model = LogisticRegression(C=c, max_iter=LOGISTIC_MAX_ITER).fit(train, task.y_train)

    def log_odds(x: np.ndarray) -> np.ndarray:
        logp = model.predict_log_proba(x)
        return logp[:, 1:] - logp[:, :1]

    return Features(log_odds(train), log_odds(inputs(task.features.test, task.z_test)))
