"""Compiled, batch-sharded tokenizer entry points for pretokenization, generation and benchmarks.

The batch axis is split over the mesh's batch axes (those of `batch_axes` the mesh has, by default
`('data', 'fsdp')`); the tokenizer's variables are replicated (ViT-B tokenizers are ~100M
parameters). The batch size must be a multiple of the number of devices on those axes.

    encode = compiled.encode_fn(tok, mesh)                          # raw=True: normalises raw inputs too
    tokens = encode(compiled.replicate(variables, mesh), images)
    decode = compiled.decode_fn(tok, mesh, **decode_options)      # options: static, decoder-specific
    images = decode(variables, tokens, rng)                        # rng: None for deterministic decoders
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from fourm_jax.sharding import dim_axes
from fourm_jax.tokenizers import inputs

BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
    """Leading axis split over the batch axes present in `mesh`, the rest replicated."""
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes or None))


def replicate(variables, mesh: Mesh):
    return jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))


def _check_batch(x: jax.Array, sharding: NamedSharding) -> None:
    axes = dim_axes(sharding.spec, 0)
    devices = math.prod(sharding.mesh.shape[axis] for axis in axes)
    if x.shape[0] % devices:
        raise ValueError(f"batch size {x.shape[0]} is not a multiple of the {devices} devices on mesh axes "
                         f"{sharding.spec[0]}; pad the batch")


def _compile(fn: Callable, mesh: Mesh, in_shardings: tuple, out_sharding: NamedSharding) -> Callable:
    """jax.jit with shardings, callable under a mesh with Auto or Explicit axes.

    The tokenizers index codebooks with sharded ids; under Explicit axes such gathers would need
    per-op output shardings, so there the function runs with its axes switched to Auto.
    """
    if any(t == AxisType.Explicit for t in mesh.axis_types):
        fn = jax.sharding.auto_axes(fn, out_sharding=out_sharding.spec)
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_sharding)

    def call(*args):
        with jax.set_mesh(mesh):
            return jitted(*args)

    return call


def encode_fn(tokenizer, mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES, *,
              raw: bool = False) -> Callable:
    """`encode(variables, x) -> tokens`, jit-compiled with the batch sharded over `batch_axes`.

    With `raw`, `x` holds raw modality values (uint8 images, depth, class ids: what datasets store)
    and `inputs.normalize` turns them into model inputs on the device, inside the same program.
    """
    data = batch_sharding(mesh, batch_axes)
    modality = tokenizer.config.modality

    def encode_batch(variables, x):
        return tokenizer.encode(variables, inputs.normalize(modality, x) if raw else x)

    compiled = _compile(encode_batch, mesh, (NamedSharding(mesh, PartitionSpec()), data), data)

    def encode(variables, x):
        _check_batch(x, data)
        return compiled(variables, x)

    return encode


def decode_fn(tokenizer, mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES, **options) -> Callable:
    """`decode(variables, tokens, rng=None) -> x`, jit-compiled and batch-sharded. `options` are
    the decoder's static settings (none for ViT/MLP decoders; sampling steps etc. for diffusion)."""
    data = batch_sharding(mesh, batch_axes)
    replicated = NamedSharding(mesh, PartitionSpec())

    def decode_tokens(variables, tokens, rng):
        return tokenizer.decode(variables, tokens, rng=rng, **options)

    compiled = _compile(decode_tokens, mesh, (replicated, data, replicated), data)

    def decode(variables, tokens, rng=None):
        if rng is None and tokenizer.needs_rng:
            raise ValueError(f"{type(tokenizer).__name__} samples its output: pass rng")
        _check_batch(tokens, data)
        return compiled(variables, tokens, rng)

    return decode
