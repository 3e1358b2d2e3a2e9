"""The ml-4m <-> fourm_jax mapping: config.json, the state-dict table, and its error messages."""

import json

import numpy as np
import pytest
from flax import nnx

from fourm_jax.convert.ml4m import (
    ConversionError,
    config_from_ml4m,
    config_to_ml4m,
    entries,
    model_from_source,
    state_dict,
)
from fourm_jax.convert.safetensors_io import ArraySource
from fourm_jax.model.config import variant_config
from fourm_jax.model.fourm import FourM, abstract_fourm
from tests.model.parity_fixtures import fixture_dirs

SMALL = dict(domains_in=("rgb@224", "tok_rgb@224", "tok_depth@224", "caption"),
             domains_out=("tok_rgb@224", "tok_depth@224", "caption"))


@pytest.mark.parametrize("variant, count", [("fm_tiny_6e_6d_gelu", 235),
                                            ("fm_base_12e_12d_swiglu_nobias", 331)])
@pytest.mark.parametrize("scan", [True, False])
def test_state_dict_has_ml4m_entry_count(variant, count, scan):
    """Counts from ml-4m's state dicts of these models (../shared/reference/ml4m-model.md, 8.2 and 8.3)."""
    table = entries(abstract_fourm(variant_config(variant, scan_layers=scan, **SMALL)))
    assert len(table) == count == len({e.key for e in table})
    assert table[0].key == "mask_token" and table[-1].key == "decoder_norm.bias"


def test_base_swiglu_shapes():
    model = abstract_fourm(variant_config("fm_base_12e_12d_swiglu_nobias", **SMALL))
    shapes = {e.key: e.torch_shape for e in entries(model)}
    assert shapes["encoder.3.attn.qkv.weight"] == (2304, 768)
    assert shapes["decoder.11.cross_attn.kv.weight"] == (1536, 768)
    assert shapes["decoder.0.mlp.fc3.weight"] == (2048, 768)
    assert shapes["encoder.0.norm1.bias"] == (768,)  # a zero buffer in no-bias models
    assert shapes["decoder_proj_context.bias"] == (768,)
    assert shapes["encoder_embeddings.rgb@224.proj.weight"] == (768, 768)
    assert shapes["encoder_embeddings.caption.pos_emb"] == (1, 512, 768)
    assert shapes["decoder_embeddings.tok_rgb@224.to_logits.weight"] == (16384, 768)


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_config_round_trip(fixture):
    ml4m = json.loads((fixture / "config.json").read_text())
    assert config_to_ml4m(config_from_ml4m(ml4m)) == ml4m


def test_config_errors_name_the_key():
    ml4m = config_to_ml4m(variant_config("fm_test_tiny_gelu", **SMALL))
    with pytest.raises(ConversionError, match="'tok_thermal@224'.*registry"):
        config_from_ml4m(ml4m | dict(domains_in=["tok_thermal@224"]))
    with pytest.raises(ConversionError, match="unknown key.*dimension"):
        config_from_ml4m(ml4m | dict(dimension=3))
    with pytest.raises(ConversionError, match="act_layer 'ReLU'"):
        config_from_ml4m(ml4m | dict(act_layer="ReLU"))


def test_4m21_drops_outputs_without_decoder():
    ml4m = config_to_ml4m(variant_config("fm_test_tiny_gelu", **SMALL))
    config = config_from_ml4m(ml4m | dict(domains_out=["caption", "t5_caption"]))
    assert config.domains_out == ("caption",)


@pytest.fixture(scope="module")
def unusual_model():
    """Register tokens, a learned position table, T5 features, tied heads, separate mod_emb."""
    config = variant_config("fm_test_tiny_swiglu_qknorm",
                            domains_in=("t5_caption", "tok_dinov2_global", "caption"),
                            domains_out=("tok_dinov2_global", "caption"), num_register_tokens=2,
                            tie_output_embeddings=True, share_modality_embeddings=False, scan_layers=False)
    return FourM(config, rngs=nnx.Rngs(0))


def test_in_memory_round_trip_of_unusual_features(unusual_model):
    tensors = state_dict(unusual_model)
    assert tensors["register_tokens"].shape == (1, 2, 64)
    assert tensors["encoder_embeddings.tok_dinov2_global.pos_emb"].shape == (1, 16, 64)
    np.testing.assert_array_equal(tensors["decoder_embeddings.caption.to_logits.weight"],
                                  tensors["decoder_embeddings.caption.token_emb.weight"])
    keys = list(tensors)
    # ml-4m lists learned position tables (parameters) before mod_emb, sin-cos buffers after it.
    assert keys.index("encoder_embeddings.tok_dinov2_global.pos_emb") < keys.index(
        "encoder_embeddings.tok_dinov2_global.mod_emb")
    assert keys.index("encoder_embeddings.caption.pos_emb") > keys.index("encoder_embeddings.caption.mod_emb")
    back = state_dict(model_from_source(ArraySource(tensors), unusual_model.config))
    assert back.keys() == tensors.keys()
    for key in tensors:
        np.testing.assert_array_equal(back[key], tensors[key], err_msg=key)


@pytest.fixture
def tensors():
    config = variant_config("fm_test_tiny_swiglu_qknorm", **SMALL, scan_layers=False)
    return config, state_dict(FourM(config, rngs=nnx.Rngs(0)))


def _load(config, tensors):
    return model_from_source(ArraySource(tensors, "ckpt.safetensors"), config)


def test_missing_and_unexpected_keys_are_named(tensors):
    config, tensors = tensors
    del tensors["encoder.1.mlp.fc3.weight"]
    tensors["encoder.1.mlp.fc4.weight"] = np.zeros((3,), np.float32)
    message = (r"ckpt.safetensors: missing key\(s\) \['encoder.1.mlp.fc3.weight'\]; "
               r"unexpected key\(s\) \['encoder.1.mlp.fc4.weight'\]")
    with pytest.raises(ConversionError, match=message):
        _load(config, tensors)


def test_shape_mismatch_names_key_and_both_shapes(tensors):
    config, tensors = tensors
    tensors["decoder.0.cross_attn.kv.weight"] = np.zeros((64, 64), np.float32)
    message = r"decoder.0.cross_attn.kv.weight has shape \(64, 64\), the model expects \(128, 64\)"
    with pytest.raises(ConversionError, match=message):
        _load(config, tensors)


def test_nonzero_bias_buffer_of_a_no_bias_model_is_rejected(tensors):
    config, tensors = tensors
    tensors["encoder.0.norm2.bias"] = np.full((64,), 0.5, np.float32)
    with pytest.raises(ConversionError, match="encoder.0.norm2.bias must be all zeros"):
        _load(config, tensors)


def test_shared_copies_must_agree(tensors):
    config, tensors = tensors
    tensors["decoder_embeddings.caption.mod_emb"] = tensors["decoder_embeddings.caption.mod_emb"] + 1
    with pytest.raises(ConversionError, match="decoder_embeddings.caption.mod_emb must equal "
                                              "encoder_embeddings.caption.mod_emb"):
        _load(config, tensors)


def test_non_float32_tensors_are_rejected(tensors):
    config, tensors = tensors
    tensors["mask_token"] = tensors["mask_token"].astype(np.float16)
    with pytest.raises(ConversionError, match="mask_token has dtype F16, expected F32"):
        _load(config, tensors)
