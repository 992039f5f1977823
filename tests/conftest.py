"""Shared fixtures: one real local Ray instance per test session; torch kept to one thread."""

from __future__ import annotations

import os

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
