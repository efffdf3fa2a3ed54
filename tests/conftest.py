"""Shared fixtures: the trained organism (trained once into the user cache when missing), and one
torch thread for modules of small problems."""

import pytest
import torch


@pytest.fixture(scope="session")
def organism_dir():
    from logitleak.models.organism_train import ensure_organism

    return ensure_organism(seed=0, progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """Small problems run as fast on one torch thread, and are immune to OpenMP spin-waiting when
    the CPU is shared (which made them up to 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def organism_adapter(organism_dir):
    """The organism loaded on the CPU (one per test module)."""
    from logitleak.models.loading import load_model

    return load_model(organism_dir, device="cpu")


@pytest.fixture(scope="module")
def organism_api(organism_adapter, one_thread):
    """`serve` over the organism in this process, as model 'organism' (a RunningServer with its engine)."""
    from servers import organism_server

    with organism_server(organism_adapter, served_model_name="organism") as srv:
        yield srv
