import jax
import numpy as np
import pytest
from flax import nnx

from fourm_jax import sharding
from fourm_jax.model.config import variant_config
from fourm_jax.train import checkpoint, finetune
from tests.train.conftest import random_model

SOURCE_IN = ("tok_rgb@224", "caption", "tok_dinov2_global")
TARGET_IN = SOURCE_IN + ("tok_depth@224",)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A saved 'previous run' (scanned layers): what init_from reads."""
    config = variant_config("fm_test_tiny_gelu", domains_in=SOURCE_IN, domains_out=SOURCE_IN,
                            scan_layers=True)
    model = random_model(config, 1)
    directory = tmp_path_factory.mktemp("source") / "ckpt"
    checkpoint.save_params(directory, nnx.state(model), config)
    return model, directory


def fresh_params(config):
    """A fresh parameter tree, sharded over fsdp as the trainer creates it."""
    model = random_model(config, 2)
    mesh = sharding.make_mesh(dict(data=2, fsdp=4))
    params = nnx.state(model, nnx.Param)
    shardings = sharding.state_shardings(params, mesh, sharding.DEFAULT_RULES)
    return checkpoint.params_tree(jax.device_put(params, shardings)), model


def test_init_from_copies_shared_parameters_and_keeps_new_ones_fresh(source):
    """A larger-modality model (4M-21 from 4M-7), unscanned, with ml-4m's `.pos_emb` drop."""
    source_model, directory = source
    config = variant_config("fm_test_tiny_gelu", domains_in=TARGET_IN, domains_out=TARGET_IN,
                            scan_layers=False)
    params, fresh_model = fresh_params(config)
    loaded, report = finetune.init_params(directory, config, params, drop=(".pos_emb",))
    qkv = loaded["encoder"]["blocks"]["1"]["attn"]["qkv"]["kernel"]
    np.testing.assert_array_equal(qkv, source_model.encoder.blocks.attn.qkv.kernel[...][1])
    assert qkv.sharding == params["encoder"]["blocks"]["1"]["attn"]["qkv"]["kernel"].sharding
    np.testing.assert_array_equal(loaded["decoder_embeddings"]["caption"]["to_logits"]["kernel"],
                                  source_model.decoder_embeddings["caption"].to_logits.kernel[...])
    # new modality: fresh; learned position embedding of a global-token modality: dropped, fresh
    np.testing.assert_array_equal(loaded["encoder_embeddings"]["tok_depth@224"]["token_emb"],
                                  fresh_model.encoder_embeddings["tok_depth@224"].token_emb[...])
    np.testing.assert_array_equal(loaded["encoder_embeddings"]["tok_dinov2_global"]["pos_emb"],
                                  fresh_model.encoder_embeddings["tok_dinov2_global"].pos_emb[...])
    assert "encoder_embeddings/tok_depth@224/token_emb" in report.fresh
    assert "encoder_embeddings/tok_dinov2_global/pos_emb" in report.fresh
    assert "encoder_embeddings.tok_dinov2_global.pos_emb" in report.dropped
    assert "encoder/blocks/0/attn/qkv/kernel" in report.loaded and not report.unused
    assert jax.tree.structure(loaded) == jax.tree.structure(params)


def test_a_tied_model_starts_from_an_untied_checkpoint(source):
    """ml-4m's release checkpoints keep two copies of each head; its training models tie them."""
    source_model, directory = source
    config = variant_config("fm_test_tiny_gelu", domains_in=SOURCE_IN, domains_out=SOURCE_IN,
                            tie_output_embeddings=True)
    params, _ = fresh_params(config)
    loaded, report = finetune.init_params(directory, config, params)
    np.testing.assert_array_equal(loaded["decoder_embeddings"]["caption"]["token_emb"],
                                  source_model.decoder_embeddings["caption"].token_emb[...])
    assert not report.fresh


def test_a_shape_mismatch_names_the_key(source):
    _, directory = source
    config = variant_config("fm_test_tiny_gelu", domains_in=SOURCE_IN, domains_out=SOURCE_IN, dim=32,
                            num_heads=2)
    params, _ = fresh_params(config)
    with pytest.raises(ValueError, match=r"mask_token has shape \(1, 1, 64\) in the checkpoint"):
        finetune.init_params(directory, config, params)
