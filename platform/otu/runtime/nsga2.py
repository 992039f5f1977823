"""Optuna's NSGA-II sampler in a form Ray Tune can pickle."""

from __future__ import annotations

import threading
from typing import Any

import optuna


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """``optuna.samplers.NSGAIISampler`` that survives pickling.

    Since optuna 5.1 the genetic-algorithm base sampler holds a ``threading.Lock`` (``_thread_lock``,
    optuna/samplers/_ga/_base.py:61) and defines no ``__getstate__``, so ``pickle`` refuses it. Ray Tune
    pickles the searcher, and with it the sampler, when the ``Tuner`` is built and at every experiment
    checkpoint. The lock is left out of the pickled state and a fresh one is made on load; the
    population caches and the random state travel as they are.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if "_thread_lock" in state:
            state["_thread_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_thread_lock" in state:
            self._thread_lock = threading.Lock()
