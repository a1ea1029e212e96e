"""Shared fixtures: every test starts from a fixed seed and an empty Pyro param store. Helpers
live in :mod:`tests.common`."""

from __future__ import annotations

import pyro
import pytest

from pyro_vae import VAE
from tests.common import small_vae


@pytest.fixture(autouse=True)
def _seeded():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def tiny_vae() -> VAE:
    return small_vae()
