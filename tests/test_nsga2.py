"""The NSGA-II sampler survives the pickling Ray Tune does (optuna 5.1 added an unpicklable lock)."""

from __future__ import annotations

import pickle
import threading

import optuna

from otu.runtime.nsga2 import NSGAIISampler


def objectives(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0.0, 1.0)
    return x, (1.0 - x) ** 2


def test_a_pickled_sampler_suggests_what_the_original_would():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = NSGAIISampler(seed=3, population_size=4)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(objectives, n_trials=6)
    copy = pickle.loads(pickle.dumps(sampler))
    if hasattr(sampler, "_thread_lock"):
        assert isinstance(copy._thread_lock, type(threading.Lock()))
        assert copy._thread_lock is not sampler._thread_lock
    twin = optuna.create_study(directions=["minimize", "minimize"], sampler=copy)
    for trial in study.trials:
        twin.add_trial(trial)
    study.optimize(objectives, n_trials=4)
    twin.optimize(objectives, n_trials=4)
    assert [t.params for t in twin.trials[6:]] == [t.params for t in study.trials[6:]]
