"""Metrics of the tabular family.

Feature unlearning (downstream classifiers fit on the unlearned training features, scored on the
test split; each metric is the strongest classifier's):

* ``utility_auc`` / ``utility_acc`` — ROC AUC (one-vs-rest macro for > 2 classes) and accuracy of
  predicting the target;
* ``leakage_auc`` / ``leakage_bacc`` — the same for an adversary predicting the sensitive group
  (balanced accuracy); nothing leaks at AUC 0.5 and balanced accuracy 1/(number of groups);
* ``discrimination`` — max over classes c of (max_z m_zc − min_z m_zc) / max_z m_zc, where m_zc is
  group z's mean predicted probability of class c (binary target: the positive class only), from
  the classifier with the best utility AUC;
* ``mi_estimate`` — plug-in Î(adversary's predicted group probabilities; Z) on the test split.

Data-point unlearning: ``retain_acc``, ``forget_acc``, ``test_acc`` and ``mi`` = Î(softmax outputs;
Z) with Z = 0 on the training set (retain and forget) and Z = 1 on the retain set.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn

from otu.classifiers.train import predict_logits
from otu.tabular.mi import plugin_mi
from otu.tabular.spec import TabularEval
from otu.tabular.tables import DigitsSplits, Features, FeatureTask

LOGISTIC_MAX_ITER = 2000
"""Solver iteration cap for the logistic regressions (a convergence bound, not a model choice)."""


def classifier(kind: str, ev: TabularEval, seed: int) -> ClassifierMixin:
    if kind == "logistic":
        return LogisticRegression(C=ev.logistic_c, max_iter=LOGISTIC_MAX_ITER)
    return RandomForestClassifier(
        n_estimators=ev.forest_trees, max_depth=ev.forest_max_depth, random_state=seed, n_jobs=1
    )


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC of class probabilities ``probs`` (N×K); one-vs-rest macro average for K > 2."""
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=np.arange(probs.shape[1])))


def fit_predict(
    kind: str, ev: TabularEval, seed: int, features: Features, labels: np.ndarray, n_labels: int
) -> np.ndarray:
    """Test-split class probabilities (N×n_labels) of a classifier fit on the training split."""
    model = classifier(kind, ev, seed).fit(features.train, labels)
    probs = np.zeros((len(features.test), n_labels))
    probs[:, model.classes_] = model.predict_proba(features.test)
    return probs


def discrimination(probs: np.ndarray, z: np.ndarray) -> float:
    """Largest relative gap between the groups' mean predicted class probabilities."""
    means = np.stack([probs[z == g].mean(axis=0) for g in np.unique(z)])  # groups × classes
    if probs.shape[1] == 2:
        means = means[:, 1:]
    top, bottom = means.max(axis=0), means.min(axis=0)
    gaps = np.divide(top - bottom, top, out=np.zeros_like(top), where=top > 0)
    return float(gaps.max())


def feature_metrics(task: FeatureTask, features: Features, ev: TabularEval, seed: int) -> dict[str, float]:
    """Utility, leakage, discrimination and Î of ``features`` (see the module docstring)."""
    n_classes, n_groups = len(task.classes), len(task.groups)
    utility = {kind: fit_predict(kind, ev, seed, features, task.y_train, n_classes) for kind in ev.classifiers}
    leakage = {kind: fit_predict(kind, ev, seed, features, task.z_train, n_groups) for kind in ev.classifiers}
    utility_auc = {kind: auc(task.y_test, p) for kind, p in utility.items()}
    leakage_auc = {kind: auc(task.z_test, p) for kind, p in leakage.items()}
    best_utility = max(utility_auc, key=utility_auc.__getitem__)
    strongest = max(leakage_auc, key=leakage_auc.__getitem__)
    z_test = torch.as_tensor(task.z_test)
    return {
        "utility_auc": utility_auc[best_utility],
        "utility_acc": max(float(np.mean(p.argmax(1) == task.y_test)) for p in utility.values()),
        "leakage_auc": leakage_auc[strongest],
        "leakage_bacc": max(balanced_accuracy_score(task.z_test, p.argmax(1)) for p in leakage.values()),
        "discrimination": discrimination(utility[best_utility], task.z_test),
        "mi_estimate": _nonnegative(plugin_mi(torch.as_tensor(leakage[strongest]), z_test)),
    }


@torch.no_grad()
def classifier_metrics(splits: DigitsSplits, model: nn.Module) -> dict[str, float]:
    """Accuracies on retain / forget / test and Î(softmax outputs; Z) of a digits classifier."""
    model.eval()
    logits = predict_logits(model, splits.images)
    correct = logits.argmax(dim=1) == splits.labels
    probs = logits.softmax(dim=1)
    train, retain = splits.train, splits.retain
    z = torch.cat([torch.zeros(len(train)), torch.ones(len(retain))]).long()
    return {
        "retain_acc": float(correct[retain].float().mean()),
        "forget_acc": float(correct[splits.forget].float().mean()),
        "test_acc": float(correct[splits.test].float().mean()),
        "mi": _nonnegative(plugin_mi(torch.cat([probs[train], probs[retain]]), z)),
    }


def _nonnegative(mi: torch.Tensor) -> float:
    """MI ≥ 0; the estimator's log guard can leave ~−1e-10 where the true value is 0."""
    return max(0.0, float(mi))
