"""Parity with ml-4m's tokenizers on the fixtures its own code produced, and the import rules.

Runs on every fixture directory (one holding manifest.json) under tests/fixtures/tokenizers, or,
when FOURM_TOKENIZER_FIXTURES names a directory, under that one instead. Each fixture is compared
stage by stage as its README describes, every stage fed the expected output of the previous one:
token ids exactly, floats with assert_allclose(atol=1e-4, rtol=1e-5).
"""

import functools
import hashlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from fourm_jax.model.config import ConfigError
from fourm_jax.tokenizers import inputs, layers, ml4m
from fourm_jax.tokenizers.vqvae import VQVAE

FIXTURE_ROOT = pathlib.Path(os.environ.get("FOURM_TOKENIZER_FIXTURES")
                            or pathlib.Path(__file__).parents[1] / "fixtures" / "tokenizers")
FIXTURES = sorted(p.parent for p in FIXTURE_ROOT.rglob("manifest.json"))
ATOL, RTOL = 1e-4, 1e-5
ARGMAX_MARGIN = 1e-3
# Every stage a fixture may hold; an unknown one fails the test rather than going unchecked.
STAGES = {"encoder_input", "encoder_pos_emb", "encoder_features", "pre_quant", "tokens", "quant",
          "lookup_margin", "decoder_pos_emb", "decoded", "decoded_argmax", "decoded_argmax_margin"}


def test_fixtures_found():
    assert FIXTURES, f"no tokenizer fixtures (directories with manifest.json) under {FIXTURE_ROOT}"


def materialise(directory: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The fixture's state dict, rebuilt by the manifest's rule and checked against its hashes."""
    manifest = json.loads((directory / "manifest.json").read_text())
    buffers = np.load(directory / "buffers.npz")
    state_dict = {}
    for i, entry in enumerate(manifest["entries"]):
        if "init" in entry:
            noise = np.random.default_rng([manifest["seed"], i]).standard_normal(entry["shape"])
            array = (entry["init"]["mean"] + entry["init"]["std"] * noise).astype(np.float32)
        elif "same_as" in entry:
            array = state_dict[entry["same_as"]].copy()
        else:
            array = buffers[entry["npz_key"]]
        assert list(array.shape) == entry["shape"], entry["key"]
        digest = hashlib.sha256(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())
        assert digest.hexdigest() == entry["sha256"], f"{directory.name}: {entry['key']} does not rebuild"
        state_dict[entry["key"]] = array
    return manifest, state_dict


class Fixture:
    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        self.manifest, self.state_dict = materialise(directory)
        self.ml4m_config = json.loads((directory / "config.json").read_text())
        self.presets = self.manifest.get("vit_presets")
        config = ml4m.config_from_ml4m(self.ml4m_config, vit_presets=self.presets)
        self.tokenizer = VQVAE(config)
        self.variables = ml4m.state_dict_to_variables(self.state_dict, config, source=directory.name)
        self.inputs = np.load(directory / "inputs.npz")
        self.expected = np.load(directory / "expected.npz")
        self.groups = [str(g) for g in self.inputs["groups"]]

    @property
    def config(self):
        return self.tokenizer.config

    def model_input(self, group: str) -> np.ndarray:
        """inputs.npz `<group>/input` in our layout (channels-last; vectors `[B, C]`)."""
        return self.to_ours(self.inputs[f"{group}/input"], vector=True)

    def to_ours(self, array: np.ndarray, vector: bool = False) -> np.ndarray:
        """An ml-4m float map `[B, C, H, W]` channels-last; 1x1 vector maps `[B, C]` if asked."""
        if array.ndim != 4 or not np.issubdtype(array.dtype, np.floating):
            return array
        if vector and self.config.modality == "vector":
            return array.reshape(array.shape[0], -1)
        return array.transpose(0, 2, 3, 1)

    def stage(self, group: str, name: str) -> np.ndarray | None:
        key = f"{group}/{name}"
        return self.to_ours(self.expected[key]) if key in self.expected else None


@pytest.fixture(scope="module", params=FIXTURES, ids=[str(p.relative_to(FIXTURE_ROOT)) for p in FIXTURES])
def fixture(request) -> Fixture:
    return Fixture(request.param)


def close(got, expected, what):
    np.testing.assert_allclose(np.asarray(got), expected, atol=ATOL, rtol=RTOL, err_msg=what)


def test_only_known_stages(fixture):
    for key in fixture.expected.files:
        group, _, stage = key.partition("/")
        assert group in fixture.groups and stage in STAGES, f"{fixture.directory.name}: unchecked entry {key}"


def test_input_handling(fixture):
    """raw -> model input as ml-4m normalises it (decided by the raw dtype and the config)."""
    for group in fixture.groups:
        raw, expected = fixture.inputs[f"{group}/raw"], fixture.model_input(group)
        if fixture.config.modality == "semseg":
            got = inputs.normalize("semseg", raw)
            np.testing.assert_array_equal(np.asarray(got), expected)
            continue
        if raw.dtype == np.uint16:
            got = inputs.normalize("depth", raw)
        elif raw.dtype == np.uint8:
            got = inputs.normalize("image", raw if raw.shape[-1] == fixture.config.n_channels
                                 else np.moveaxis(raw, 1, -1))
        else:  # teacher features / vectors: ml-4m only reshapes them
            got = fixture.to_ours(raw, vector=True).reshape(expected.shape)
        close(got, expected, f"{fixture.directory.name} {group}: model input")


@functools.partial(jax.jit, static_argnums=0)
def run_stages(tok, variables, x, features, pre_quant, quant, tokens):
    """Every stage of the tokenizer, each fed the expected output of the previous one (one compile)."""
    prepared = tok.prepare_input(variables, x)
    quantized, quantized_tokens = tok.quantize(variables, pre_quant)
    return dict(prepared=prepared, features=tok.encoder_features(variables, prepared),
                pre_quant=layers.dense(variables["params"]["quant_proj"], features), quant=quantized,
                tokens=quantized_tokens, lookup=tok.lookup(variables, tokens),
                decoded_from_quant=tok.decode_quant(variables, quant),
                decoded_from_tokens=tok.decode(variables, tokens),
                encoded=tok.encode(variables, x))


def test_stages(fixture):
    tok, variables = fixture.tokenizer, fixture.variables
    name = fixture.directory.name
    for group in fixture.groups:
        stage = lambda s: fixture.stage(group, s)  # noqa: B023
        fed = [jnp.asarray(stage(s)) for s in ("encoder_features", "pre_quant", "quant", "tokens")]
        got = run_stages(tok, variables, jnp.asarray(fixture.model_input(group)), *fed)
        where = f"{name} {group}"
        if stage("encoder_input") is not None:
            close(got["prepared"], stage("encoder_input"), f"{where}: encoder input")
        for part in ("encoder", "decoder"):
            table = stage(f"{part}_pos_emb")  # [1, h, w, D]
            if table is not None:
                stored = jnp.asarray(variables["buffers"][part]["pos_emb"])
                resized = layers.resize_pos_emb(stored, *table.shape[1:3])
                close(resized, table[0], f"{where}: {part} position table")
        close(got["features"], stage("encoder_features"), f"{where}: encoder features")
        close(got["pre_quant"], stage("pre_quant"), f"{where}: quant_proj")
        np.testing.assert_array_equal(np.asarray(got["tokens"]), stage("tokens"), f"{where}: token ids")
        close(got["quant"], stage("quant"), f"{where}: quantized vectors")
        close(got["lookup"], stage("quant"), f"{where}: lookup")
        decoded = fixture.to_ours(fixture.expected[f"{group}/decoded"], vector=True)
        close(got["decoded_from_quant"], decoded, f"{where}: decode_quant")
        close(got["decoded_from_tokens"], decoded, f"{where}: decode_tokens")
        if stage("decoded_argmax") is not None:
            sure = stage("decoded_argmax_margin") > ARGMAX_MARGIN
            argmax = np.asarray(got["decoded_from_quant"]).argmax(-1)
            np.testing.assert_array_equal(argmax[sure], stage("decoded_argmax")[sure], f"{where}: argmax")
        # End to end: the model input straight to ml-4m's token ids.
        np.testing.assert_array_equal(np.asarray(got["encoded"]), stage("tokens"), f"{where}: encode")


def write_release(directory: pathlib.Path, state_dict, ml4m_config, with_config_json=True):
    """A checkpoint as ml-4m releases it: model.safetensors (str() metadata) [+ config.json]."""
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {k: str(v) for k, v in ml4m_config.items()}
    safetensors.numpy.save_file(state_dict, str(directory / "model.safetensors"), metadata=metadata)
    if with_config_json:
        (directory / "config.json").write_text(json.dumps(ml4m_config))
    return directory


@pytest.mark.parametrize("source", ["config_json", "metadata"])
def test_load_release(fixture, tmp_path, source):
    directory = write_release(tmp_path / "release", fixture.state_dict, fixture.ml4m_config,
                              with_config_json=source == "config_json")
    tok, variables = ml4m.load(directory, vit_presets=fixture.presets)
    assert tok.config == fixture.config
    group = fixture.groups[0]
    x = jnp.asarray(fixture.model_input(group))
    np.testing.assert_array_equal(np.asarray(tok.encode(variables, x)), fixture.expected[f"{group}/tokens"])


def test_encoder_only_load(fixture, tmp_path):
    """Tokens from an encoder-only checkpoint (decoder and post_quant_proj dropped), and decoder keys
    in a full checkpoint are accepted and ignored when loading encoder-only."""
    encoder_only = {k: v for k, v in fixture.state_dict.items()
                    if not k.startswith(("decoder.", "post_quant_proj."))}
    for state_dict in (encoder_only, fixture.state_dict):
        directory = write_release(tmp_path / f"enc{len(state_dict)}", state_dict, fixture.ml4m_config)
        tok, variables = ml4m.load(directory, encoder_only=True, vit_presets=fixture.presets)
        assert tok.config.decoder is None and "decoder" not in variables["params"]
        group = fixture.groups[0]
        tokens = tok.encode(variables, jnp.asarray(fixture.model_input(group)))
        np.testing.assert_array_equal(np.asarray(tokens), fixture.expected[f"{group}/tokens"])
    with pytest.raises(ml4m.CheckpointError, match="missing key.*decoder"):
        ml4m.load(tmp_path / f"enc{len(encoder_only)}", vit_presets=fixture.presets)


def test_save_round_trip(fixture, tmp_path):
    ml4m.save(tmp_path / "saved", fixture.tokenizer, fixture.variables)
    tok, variables = ml4m.load(tmp_path / "saved", vit_presets=fixture.presets)
    assert tok.config == fixture.config
    reread = ml4m.variables_to_state_dict(variables, tok.config)
    for key, value in fixture.state_dict.items():
        np.testing.assert_array_equal(reread[key], value, err_msg=key)


# ----------------------------------------------------------------------------- error rules

def test_shape_mismatch_names_key_and_both_shapes(fixture, tmp_path):
    state_dict = dict(fixture.state_dict)
    key = "quant_proj.weight"
    wrong = np.zeros((state_dict[key].shape[0] + 1, *state_dict[key].shape[1:]), np.float32)
    state_dict[key] = wrong
    directory = write_release(tmp_path / "bad", state_dict, fixture.ml4m_config)
    with pytest.raises(ml4m.CheckpointError) as error:
        ml4m.load(directory, vit_presets=fixture.presets)
    message = str(error.value)
    assert "quant_proj.weight" in message and str(wrong.shape) in message
    assert str(fixture.state_dict[key].shape) in message and "model.safetensors" in message


def test_unknown_and_missing_keys_are_named(fixture, tmp_path):
    state_dict = dict(fixture.state_dict)
    state_dict["encoder.extra_layer.weight"] = np.zeros((2,), np.float32)
    directory = write_release(tmp_path / "extra", state_dict, fixture.ml4m_config)
    with pytest.raises(ml4m.CheckpointError, match="unexpected key.*encoder.extra_layer.weight"):
        ml4m.load(directory, vit_presets=fixture.presets)
    state_dict = dict(fixture.state_dict)
    del state_dict["quant_proj.bias"]
    directory = write_release(tmp_path / "missing", state_dict, fixture.ml4m_config)
    with pytest.raises(ml4m.CheckpointError, match="missing key.*quant_proj.bias"):
        ml4m.load(directory, vit_presets=fixture.presets)


def test_config_that_does_not_match_the_weights(fixture, tmp_path):
    config = dict(fixture.ml4m_config, latent_dim=fixture.ml4m_config["latent_dim"] * 2)
    directory = write_release(tmp_path / "cfg", fixture.state_dict, config)
    with pytest.raises(ml4m.CheckpointError, match="quant_proj.weight"):
        ml4m.load(directory, vit_presets=fixture.presets)


def test_unreadable_checkpoint_names_the_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ml4m.CheckpointError, match="model.safetensors.*not a readable"):
        ml4m.load(tmp_path)
    with pytest.raises(ml4m.CheckpointError, match="no such file"):
        ml4m.load(tmp_path / "nope")


def test_diffusion_checkpoint_loads_encoder_only():
    config = {"dec_type": "unet_patched", "beta_schedule": "linear", "image_size": 224}
    with pytest.raises(ConfigError, match="diffusion decoder.*encoder_only=True"):
        ml4m.config_from_ml4m(config)
    assert ml4m.config_from_ml4m(config, encoder_only=True).decoder is None


def test_unknown_vit_preset_is_named():
    with pytest.raises(ConfigError, match="enc_type: unsupported network 'vit_tiny_enc'"):
        ml4m.config_from_ml4m({"enc_type": "vit_tiny_enc"})


def test_metadata_parsing():
    parsed = ml4m.parse_metadata({"a": "None", "b": "True", "c": "0.0625", "d": "vit_b_enc", "e": "[1, 2]"})
    assert parsed == {"a": None, "b": True, "c": 0.0625, "d": "vit_b_enc", "e": [1, 2]}


def test_import_fills_exactly_our_variables(fixture):
    """The mapping table covers every variable of the tokenizer, with the shapes init gives."""
    fresh = jax.eval_shape(fixture.tokenizer.init, jax.random.key(0))
    assert jax.tree.structure(fresh) == jax.tree.structure(fixture.variables)
    for got, want in zip(jax.tree.leaves(fixture.variables), jax.tree.leaves(fresh), strict=True):
        assert got.shape == want.shape
