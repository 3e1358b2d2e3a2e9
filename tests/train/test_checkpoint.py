import dataclasses
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from fourm_jax import sharding
from fourm_jax.model.config import variant_config
from fourm_jax.model.fourm import FourM
from fourm_jax.train import checkpoint


@pytest.fixture(scope="module")
def model():
    config = variant_config("fm_test_tiny_gelu", domains_in=("tok_semseg@224", "caption"),
                            domains_out=("caption",), scan_layers=True)
    return FourM(config, rngs=nnx.Rngs(0))


def _assert_same_state(a, b):
    flat_a, flat_b = dict(nnx.to_flat_state(a)), dict(nnx.to_flat_state(b))
    assert flat_a.keys() == flat_b.keys()
    for path in flat_a:
        np.testing.assert_array_equal(flat_a[path].get_value(), flat_b[path].get_value(), err_msg=str(path))


def test_save_and_load_params(model, tmp_path):
    checkpoint.save_params(tmp_path / "ckpt", nnx.state(model), model.config)
    assert (tmp_path / "ckpt" / checkpoint.PARAMS_ITEM).is_dir()
    config, state = checkpoint.load_params(tmp_path / "ckpt")
    assert config == model.config
    _assert_same_state(state, nnx.state(model))
    with pytest.raises(FileExistsError):
        checkpoint.save_params(tmp_path / "ckpt", nnx.state(model), model.config)


def test_load_model_with_other_execution_settings(model, tmp_path):
    checkpoint.save_params(tmp_path / "ckpt", nnx.state(model), model.config)
    unscanned = checkpoint.load_model(tmp_path / "ckpt", scan_layers=False, remat_policy="full")
    assert unscanned.config == dataclasses.replace(model.config, scan_layers=False, remat_policy="full")
    np.testing.assert_array_equal(unscanned.encoder.blocks[1].mlp.fc1.kernel[...],
                                  model.encoder.blocks.mlp.fc1.kernel[...][1])
    with pytest.raises(ValueError, match="dim cannot change"):
        checkpoint.load_model(tmp_path / "ckpt", dim=32)


def test_a_training_run_directory_loads_its_latest_step(model, tmp_path):
    """A CheckpointManager run whose steps hold the same `params` and `config` items (plus others)."""
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp_path / "run", options=options) as manager:
        for step, scale in ((100, 1.0), (200, 2.0)):
            state = jax.tree.map(lambda x, s=scale: x * s, nnx.to_pure_dict(nnx.state(model)))
            manager.save(step, args=ocp.args.Composite(**{
                checkpoint.PARAMS_ITEM: ocp.args.StandardSave(checkpoint.params_tree(state)),
                checkpoint.CONFIG_ITEM: ocp.args.JsonSave(checkpoint.config_json(model.config)),
                "step": ocp.args.JsonSave({"step": step})}))
    assert checkpoint.resolve(tmp_path / "run").name == "200"
    _, state = checkpoint.load_params(tmp_path / "run")
    np.testing.assert_allclose(state["mask_token"].get_value(), 2 * model.mask_token[...])


def test_load_with_shardings(model, tmp_path):
    checkpoint.save_params(tmp_path / "ckpt", nnx.state(model), model.config)
    mesh = sharding.make_mesh(dict(fsdp=4, tensor=2))
    shardings = sharding.state_shardings(nnx.state(model), mesh, sharding.DEFAULT_RULES)
    _, state = checkpoint.load_params(tmp_path / "ckpt", shardings=shardings)
    kernel = state["decoder_embeddings"]["caption"]["to_logits"]["kernel"].get_value()
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    np.testing.assert_array_equal(kernel, model.decoder_embeddings["caption"].to_logits.kernel[...])


def test_not_a_checkpoint_and_wrong_format(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a fourm_jax checkpoint"):
        checkpoint.load_params(tmp_path)
    checkpoint.save_params(tmp_path / "ckpt", nnx.state(model), model.config)
    path = tmp_path / "ckpt" / checkpoint.CONFIG_ITEM / "metadata"  # Orbax's JSON item file
    path.write_text(json.dumps(dict(json.loads(path.read_text()), format="other/9")))
    with pytest.raises(ValueError, match="format 'other/9'"):
        checkpoint.load_config(tmp_path / "ckpt")
