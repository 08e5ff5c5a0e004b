"""Fixtures of the index tests: ``ray_address``, a local Ray with 2 CPUs shared by the tests marked ``ray``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package")
def ray_address() -> Iterator[str]:
    """A local Ray with 2 CPUs for the index tests (one start for them all, shut down after them); its address,
    for Ray builds run in other processes (``RAY_ADDRESS``). Skips the test when Ray Data is not installed."""
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'realmqa[ray]')")
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
