import dataclasses
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from fourm_jax import sharding
from fourm_jax.model.config import variant_config
from fourm_jax.train import checkpoint
from tests.train.conftest import random_model


@pytest.fixture(scope="module")
def model():
    config = variant_config("fm_test_tiny_gelu", domains_in=("tok_semseg@224", "caption"),
                            domains_out=("caption",), scan_layers=True)
    return random_model(config)


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


# -- training runs (RunCheckpoints) ------------------------------------------------------------

@pytest.fixture(scope="module")
def run_state(model):
    """A model state, an optimizer state and a data iterator, as a training run saves them."""
    import grain
    import optax

    params = checkpoint.params_tree(nnx.state(model))
    opt_state = optax.adam(1e-3).init(params)
    return params, opt_state, lambda: iter(grain.MapDataset.range(100).to_iter_dataset())


def abstract_on(tree, mesh):
    """ShapeDtypeStructs sharded over `fsdp` along their first axis where it divides."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            *(("fsdp",) if x.ndim and x.shape[0] % mesh.shape["fsdp"] == 0 else ())))), tree)


def save_steps(directory, model, run_state, steps, keep=3):
    params, opt_state, make_iterator = run_state
    iterator = make_iterator()
    manager = checkpoint.RunCheckpoints(directory, keep=keep)
    for step in steps:
        next(iterator)
        scaled = jax.tree.map(lambda x, s=step: x * s, params)
        manager.save(step, model_state=scaled, model_config=model.config, opt_state=opt_state,
                     data_iterator=iterator, run_config={"name": "test"})
    manager.wait()
    manager.close()


def restore(directory, model, run_state, mesh):
    params, opt_state, make_iterator = run_state
    iterator = make_iterator()
    manager = checkpoint.RunCheckpoints(directory, keep=3)
    try:
        restored = manager.restore_latest(model_state=abstract_on(params, mesh), model_config=model.config,
                                          opt_state=abstract_on(opt_state, mesh), data_iterator=iterator)
    finally:
        manager.close()
    return restored, iterator


def test_run_checkpoints_restore_onto_another_mesh(model, run_state, tmp_path):
    save_steps(tmp_path, model, run_state, [1, 2])
    mesh = sharding.make_mesh(dict(data=2, fsdp=4))
    restored, iterator = restore(tmp_path, model, run_state, mesh)
    assert restored.step == 2
    params = run_state[0]
    kernel = restored.model_state["decoder_embeddings"]["caption"]["to_logits"]["kernel"]
    np.testing.assert_array_equal(kernel, 2 * params["decoder_embeddings"]["caption"]["to_logits"]["kernel"])
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp")
    assert next(iterator) == 2  # the data iterator continues after the 2 elements it had given
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]
    assert json.loads((tmp_path / "2" / checkpoint.RUN_CONFIG_ITEM / "metadata").read_text()) == {
        "name": "test"}


@pytest.mark.parametrize("damage", ["no_commit_marker", "missing_data_file", "truncated_data_file"])
def test_a_damaged_latest_step_falls_back_to_the_previous_one(model, run_state, tmp_path, caplog, damage):
    save_steps(tmp_path, model, run_state, [1, 2, 3])
    if damage == "no_commit_marker":  # the process died while Orbax finalised the step
        (tmp_path / "3" / checkpoint.COMMIT_MARKER).unlink()
        message = "no Orbax commit marker"
    else:
        files = [p for p in (tmp_path / "3" / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
        data = max(files, key=lambda p: p.stat().st_size)
        if damage == "missing_data_file":
            data.unlink()
        else:
            data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
        message = "cannot be restored"
    with caplog.at_level("WARNING"):
        restored, iterator = restore(tmp_path, model, run_state, sharding.make_mesh(dict(data=8)))
    assert restored.step == 2 and next(iterator) == 2
    assert message in caplog.text and "3" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "3.corrupt"]  # nothing deleted
    assert checkpoint.resolve(tmp_path).name == "2"


def test_no_readable_step_is_an_error_not_a_fresh_start(model, run_state, tmp_path):
    save_steps(tmp_path, model, run_state, [1])
    for path in (tmp_path / "1" / "opt_state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint could be restored"):
        restore(tmp_path, model, run_state, sharding.make_mesh(dict(data=8)))
    assert (tmp_path / "1.corrupt").is_dir()


def test_a_checkpoint_of_another_model_is_refused(model, run_state, tmp_path):
    save_steps(tmp_path, model, run_state, [1])
    other = dataclasses.replace(model.config, dim=32, num_heads=2)
    params, opt_state, make_iterator = run_state
    manager = checkpoint.RunCheckpoints(tmp_path, keep=3)
    mesh = sharding.make_mesh(dict(data=8))
    with pytest.raises(checkpoint.CheckpointMismatch, match="model fields"):
        manager.restore_latest(model_state=abstract_on(params, mesh), model_config=other,
                               opt_state=abstract_on(opt_state, mesh), data_iterator=make_iterator())
    manager.close()
    assert (tmp_path / "1").is_dir()


def test_an_empty_run_directory_restores_nothing(model, run_state, tmp_path):
    restored, _ = restore(tmp_path / "new", model, run_state, sharding.make_mesh(dict(data=8)))
    assert restored is None
