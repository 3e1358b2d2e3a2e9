"""A tiny random 4M for the generation tests: 16-token image modalities and captions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm_jax.model.config import variant_config
from fourm_jax.model.fourm import abstract_fourm

A, B = "tok_dinov2_global", "tok_imagebind_global"  # 4x4 grids: 16 tokens each
INPUTS = ("rgb@224", A, B, "caption")
OUTPUTS = (A, B, "caption")


def random_model(config, seed: int = 0):
    """A FourM with random weights drawn in numpy (building one with its JAX initialisers compiles
    every initialiser, tens of seconds on a small CPU): N(0, 0.2), LayerNorm scales 1."""
    graphdef, state = nnx.split(abstract_fourm(config))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        if any(getattr(key, "key", None) == "scale" for key in path):
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(rng.normal(0.0, 0.2, x.shape).astype(x.dtype))

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


@pytest.fixture(scope="session")
def tiny_model():
    return random_model(variant_config("fm_test_tiny_gelu", domains_in=INPUTS, domains_out=OUTPUTS))
