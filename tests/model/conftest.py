"""Shared set-up of the model tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """Tiny shapes gain nothing from intra-op threads, and on a busy machine two threads
    wait on each other (these tests ran 10x slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def threads():
    """Set torch's thread count for one test (call it with the count); restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
