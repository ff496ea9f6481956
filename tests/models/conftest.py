"""Shared by the model tests: tiny models run on one torch thread."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny matrices gain nothing from threads, and on a shared 2-core machine a second
    thread waiting for a busy core made these tests 3-10x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
