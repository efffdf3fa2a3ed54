"""Shared fixtures: the trained organism (trained once into the user cache when missing)."""

import pytest


@pytest.fixture(scope="session")
def organism_dir():
    from logitleak.models.organism import ensure_organism

    return ensure_organism(seed=0, progress=False)
