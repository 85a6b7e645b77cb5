"""Strict test settings: implicit rank promotion raises, warnings are errors (pyproject)."""

import os

import jax
import pytest
from hypothesis import settings

from jaxprune import train

# Tests that shard tickets over devices need several host devices (before jax computes anything).
train.use_host_devices(8)
# The studies' command line keeps compiled programs in ~/.cache; tests write nothing outside tmp.
os.environ["JAXPRUNE_COMPILE_CACHE"] = "off"

jax.config.update("jax_numpy_rank_promotion", "raise")

# No example database: every machine, CI included, runs exactly the same examples.
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, database=None)
settings.load_profile("ci")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)
