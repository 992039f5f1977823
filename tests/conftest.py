"""Shared fixtures: one real local Ray instance per test session, one tiny-LLM cache; torch kept to one thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_local():
    """A real embedded Ray instance (2 CPUs), shared by every test that needs Ray."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def llm_cache(tmp_path_factory) -> Path:
    """The cache of every LLM test module: the tiny models are built and fine-tuned once per session."""
    return tmp_path_factory.getbasetemp() / "llm-cache"


@pytest.fixture(scope="module")
def prepared(llm_cache):
    """The tiny OPT-OUT spec of test_llm.py, parsed, and its prepared task."""
    from test_llm import tiny_spec

    from otu.llm.family import FAMILY
    from otu.spec import parse_experiment

    exp = parse_experiment(tiny_spec(llm_cache))
    return exp, FAMILY.prepare(exp.job(), exp.context())


LONGEST_FIRST = ("test_readme.py", "test_llm_distributed.py", "test_paths.py", "test_sweep.py", "test_cluster.py")
"""Modules with the longest tests, collected first: with ``pytest -n 2`` (``make test``) the two
workers then finish together instead of one running the README smoke test alone at the end."""


def pytest_configure(config: pytest.Config) -> None:
    """Hand xdist workers at most two tests at a time. Its default first hands each worker a quarter
    of its share in one block, so one worker got every long test above (640 s) while the other ran
    out of work after 190 s."""
    if config.pluginmanager.hasplugin("xdist") and config.option.maxschedchunk is None:
        config.option.maxschedchunk = 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside each module is kept
