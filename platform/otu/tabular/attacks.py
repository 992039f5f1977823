"""A k-shot probe of the sensitive attribute (``eval.robustness``): the attacker knows Z for ``shots``
training samples (seeded, stratified by Z), fits a classifier on their features and predicts the group
of every test sample; ``leakage_auc`` / ``leakage_bacc`` as :func:`otu.tabular.metrics.feature_metrics`
defines them, for this one probe."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from otu.tabular.checks import check_shots
from otu.tabular.metrics import LOGISTIC_MAX_ITER, auc, classifier
from otu.tabular.spec import TabularEval, TabularProbe
from otu.tabular.tables import Features, FeatureTask


def probe_leakage(
    task: FeatureTask, features: Features, attack: TabularProbe, ev: TabularEval, seed: int
) -> dict[str, float]:
    """Leakage of the test split's groups to a probe fit on ``attack.shots`` labelled training samples."""
    known = known_samples(task, attack, seed)
    probe = (
        MLPClassifier((attack.hidden, attack.hidden), max_iter=LOGISTIC_MAX_ITER, random_state=seed)
        if attack.classifier == "mlp"
        else classifier(attack.classifier, ev, seed)
    ).fit(features.train[known], task.z_train[known])
    probs = np.zeros((len(features.test), len(task.groups)))
    probs[:, probe.classes_] = probe.predict_proba(features.test)
    return {
        "leakage_auc": auc(task.z_test, probs),
        "leakage_bacc": float(balanced_accuracy_score(task.z_test, probs.argmax(1))),
    }


def known_samples(task: FeatureTask, attack: TabularProbe, seed: int) -> np.ndarray:
    """Indices of the training samples whose group the attacker knows: a seeded split stratified by Z."""
    n = len(task.z_train)
    check_shots(attack, n, len(task.groups))
    known, _ = train_test_split(np.arange(n), train_size=attack.shots, stratify=task.z_train, random_state=seed)
    return np.sort(known)
