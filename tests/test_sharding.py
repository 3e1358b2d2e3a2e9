import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from fourm_jax import sharding
from fourm_jax.model.config import variant_config
from fourm_jax.model.example_batch import example_batch
from fourm_jax.model.fourm import FourM, abstract_fourm

RULES = sharding.DEFAULT_RULES


def test_make_mesh_fills_the_remaining_axis():
    mesh = sharding.make_mesh(dict(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2)
    assert dict(sharding.make_mesh(dict(data=-1)).shape) == dict(data=8, fsdp=1, tensor=1)


@pytest.mark.parametrize("shape, message", [
    (dict(data=-1, fsdp=-1), "at most one"),
    (dict(data=3, fsdp=-1), "not divisible"),
    (dict(data=4, fsdp=4), "needs 16 devices"),
    (dict(model=2), "unknown axis model"),
    (dict(tensor=0), "mesh.tensor"),
])
def test_make_mesh_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(shape)


def test_validate_rules_errors():
    with pytest.raises(ValueError, match=r"sharding_rules\[1\].*'embed'.*unknown mesh axis 'model'"):
        sharding.validate_rules([("batch", "data"), ("embed", "model")])
    with pytest.raises(ValueError, match="appears twice"):
        sharding.validate_rules([("mlp", "tensor"), ("mlp", None)])


def test_logical_to_spec_uses_each_mesh_axis_once_and_only_where_it_divides():
    rules = sharding.validate_rules(RULES)
    mesh_shape = dict(data=2, fsdp=2, tensor=4)
    assert sharding.logical_to_spec(("batch", "length", "embed"), rules) == P(("data", "fsdp"), None, None)
    assert sharding.logical_to_spec(("embed", None, "heads", "kv"), rules, (64, 3, 4, 16), mesh_shape) == P(
        "fsdp", None, "tensor", None)
    # 6 heads cannot be split 4 ways: replicated along `tensor`.
    assert sharding.logical_to_spec(("embed", "heads"), rules, (64, 6), mesh_shape) == P("fsdp", None)


def test_every_parameter_axis_has_a_rule():
    config = variant_config("fm_test_tiny_swiglu_qknorm", domains_in=("rgb@224", "t5_caption", "caption"),
                            domains_out=("caption",), num_register_tokens=2)
    names = set()
    for _, variable in nnx.to_flat_state(nnx.state(abstract_fourm(config))):
        names.update(a for a in variable.get_metadata()["out_sharding"] if a is not None)
    assert names <= {name for name, _ in RULES}


def test_state_shardings_of_scanned_and_unscanned_layers():
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    expected = {True: P(None, "fsdp", None, "tensor", None), False: P("fsdp", None, "tensor", None)}
    for scan, spec in expected.items():
        config = variant_config("fm_test_tiny_gelu", domains_in=("caption",), domains_out=("caption",),
                                scan_layers=scan)
        layout = sharding.describe(nnx.state(abstract_fourm(config)), mesh, RULES)
        key = "encoder/blocks/attn/qkv/kernel" if scan else "encoder/blocks/0/attn/qkv/kernel"
        assert layout[key] == str(spec)
        assert layout["decoder_embeddings/caption/to_logits/kernel"] == str(P("fsdp", "tensor"))


def test_constrain_is_a_no_op_without_mesh():
    x = jnp.ones((4, 3))
    assert sharding.constrain(x, ("batch", "embed")) is x


# -- sharded equivalence ---------------------------------------------------------------------------

INPUTS = ("rgb@224", "tok_semseg@224", "color_palette")
OUTPUTS = ("tok_semseg@224", "color_palette")
NUM_ENC, NUM_DEC = 24, 16


@pytest.fixture(scope="module")
def setup():
    config = variant_config("fm_test_tiny_swiglu_qknorm", domains_in=INPUTS, domains_out=OUTPUTS,
                            head_chunk_size=8, encoder_depth=1, decoder_depth=1, scan_layers=False)
    graphdef, state = nnx.split(FourM(config, rngs=nnx.Rngs(0)))
    batch = example_batch(INPUTS, OUTPUTS, 8, NUM_ENC, NUM_DEC, seed=3)

    def loss(state, batch):
        return nnx.merge(graphdef, state)(batch, NUM_ENC, NUM_DEC)[0]

    grad_fn = jax.value_and_grad(loss)
    return grad_fn, state, batch, jax.jit(grad_fn)(state, batch)


@pytest.mark.parametrize("mesh_shape", [
    (2, 2, 2), (1, 2, 4),
    pytest.param((8, 1, 1), marks=pytest.mark.slow), pytest.param((1, 8, 1), marks=pytest.mark.slow)])
def test_loss_and_gradients_on_a_mesh_equal_single_device(setup, mesh_shape):
    grad_fn, state, batch, (ref_loss, ref_grads) = setup
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh_shape, strict=True)))
    state_sharding = sharding.state_shardings(state, mesh, RULES)
    batch_sharding = sharding.batch_sharding(mesh, RULES)
    with jax.set_mesh(mesh), sharding.axis_rules(RULES):
        step = jax.jit(grad_fn, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(None, state_sharding))
        loss, grads = step(jax.device_put(state, state_sharding), jax.device_put(batch, batch_sharding))
    qkv = grads["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"]
    assert qkv.sharding.spec == P("fsdp", None, "tensor", None)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5)
    jax.tree.map(close, grads, ref_grads)


def test_run_config_carries_mesh_and_rules(repo_dir):
    from fourm_jax import configs

    config = configs.load(f"{repo_dir}/configs/model.py:fm_test_tiny_gelu", ["mesh.fsdp=2", "mesh.tensor=2"])
    mesh = sharding.make_mesh(config.mesh)
    assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2)
    assert dict(sharding.validate_rules(config.sharding_rules))["embed"] == ("fsdp",)


@pytest.mark.parametrize("spec, dim, axes", [
    (P(("data", "fsdp"), None), 0, ("data", "fsdp")),
    (P("fsdp", "tensor"), 1, ("tensor",)),
    (P(None, "tensor"), 0, ()),
    (P(), 0, ()),
])
def test_dim_axes_lists_the_mesh_axes_of_one_dimension(spec, dim, axes):
    assert sharding.dim_axes(spec, dim) == axes
