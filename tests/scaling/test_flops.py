import math

import jax
import jax.extend
import pytest

from fourm_jax.model.config import ModelConfig, variant_config
from fourm_jax.scaling import flops
from tests.scaling import reference_4m

# Trunk parameters (blocks + final norms + context projection) of every ml-4m variant, in millions,
# from ../shared/reference/ml4m-model.md section 1 (they match ml-4m's README).
ML4M_TRUNK_MILLIONS = {
    "fm_tiny_6e_6d_gelu": 25.0, "fm_small_8e_8d_gelu": 59.1, "fm_base_12e_12d_gelu": 199.1,
    "fm_large_24e_24d_gelu": 706.5, "fm_xlarge_24e_24d_gelu": 2824.4,
    "fm_tiny_6e_6d_swiglu_nobias": 24.9, "fm_small_8e_8d_swiglu_nobias": 59.0,
    "fm_base_12e_12d_swiglu_nobias": 198.8, "fm_large_24e_24d_swiglu_nobias": 705.7,
    "fm_xlarge_24e_24d_swiglu_nobias": 2823.0,
}


@pytest.mark.parametrize("name", sorted(ML4M_TRUNK_MILLIONS))
def test_trunk_parameters_match_ml4m(name):
    counts = flops.param_counts(variant_config(name))
    assert counts.non_embedding / 1e6 == pytest.approx(ML4M_TRUNK_MILLIONS[name], abs=0.05)


def test_qk_norm_adds_two_head_dim_weights_per_attention_module():
    plain = flops.param_counts(variant_config("fm_base_12e_12d_swiglu_nobias")).non_embedding
    qk = flops.param_counts(variant_config("fm_base_12e_12d_swiglu_qknorm_nobias")).non_embedding
    assert qk - plain == 64 * 2 * (12 + 2 * 12)  # encoder: 1 attention per block; decoder: 2


def _tiny_config(**overrides):
    fields = dict(dim=8, encoder_depth=1, decoder_depth=1, num_heads=2, mlp_ratio=4.0,
                  domains_in=("rgb@224", "tok_depth@224"), domains_out=("tok_depth@224", "caption"))
    return ModelConfig(**(fields | overrides))


def test_parameter_counts_by_hand():
    counts = flops.param_counts(_tiny_config())
    d, f = 8, 32  # dim, MLP hidden
    norm = 2 * d  # scale + bias
    attention = (d * 3 * d + 3 * d) + (d * d + d)  # qkv + proj, with biases
    mlp = (d * f + f) + (f * d + d)
    encoder = (2 * norm + attention + mlp) + norm  # one block + encoder_norm
    decoder = (4 * norm + 2 * attention + mlp) + norm  # self + cross attention, 4 norms; decoder_norm
    context = d * d + d
    assert counts.non_embedding == encoder + decoder + context
    encoder_embeddings = (3 * 16 * 16 * d + d) + (8192 * d + d)  # rgb patch projection, tok_depth table
    # tok_depth's modality embedding is shared with the encoder's; output projections are tied.
    decoder_embeddings = 8192 * d + (30000 * d + d)
    assert counts.embedding == encoder_embeddings + decoder_embeddings + d  # + mask token
    untied = flops.param_counts(_tiny_config(), tie_output_embeddings=False)
    assert untied.embedding - counts.embedding == (8192 + 30000) * d


def test_training_flops_by_hand():
    config = _tiny_config(dim=64, num_heads=4)  # MLP hidden 256, GELU
    inputs, targets = {"rgb@224": 4, "tok_depth@224": 6}, {"tok_depth@224": 4, "caption": 2}
    step = flops.train_flops_per_step(config, batch_size=2, num_encoder_tokens=10, num_decoder_tokens=6,
                                      input_tokens=inputs, target_tokens=targets)
    # Per example, T = 10 encoder tokens, M = 6 decoder tokens, D = 64, F = 256, 2 FLOPs per MAC.
    encoder = (2 * 10 * 64 * 192  # qkv
               + 2 * 10 * 10 * 64 * 2  # scores and attention x values
               + 2 * 10 * 64 * 64  # output projection
               + 2 * 10 * 64 * 256 * 2)  # fc1 and fc2
    context = 2 * 10 * 64 * 64
    decoder = (2 * 6 * 64 * 192 + 2 * 6 * 6 * 64 * 2 + 2 * 6 * 64 * 64  # self-attention
               + 2 * 6 * 64 * 64 + 2 * 10 * 64 * 128  # cross-attention q (decoder), kv (encoder tokens)
               + 2 * 6 * 10 * 64 * 2 + 2 * 6 * 64 * 64  # scores, values, output projection
               + 2 * 6 * 64 * 256 * 2)  # MLP
    patches = 2 * 4 * (3 * 16 * 16) * 64  # rgb patch projection; token lookups cost nothing
    heads = 2 * 4 * 64 * 8192 + 2 * 2 * 64 * 30000  # each head on its own modality's tokens
    forward = 2 * (encoder + context + decoder + patches + heads)
    assert step.forward == forward
    assert step.forward_by_part == {"input_embedding": 2 * patches, "encoder": 2 * encoder,
                                    "context_projection": 2 * context, "decoder": 2 * decoder,
                                    "output_heads": 2 * heads}
    assert step.backward == 2 * forward - 2 * patches  # the patch projection needs no input gradient
    assert step.remat == 0 and step.total == step.forward + step.backward

    remat = flops.train_flops_per_step(config, batch_size=2, num_encoder_tokens=10, num_decoder_tokens=6,
                                       input_tokens=inputs, target_tokens=targets, remat=True)
    fc2 = 2 * 64 * 256  # per token: the MLP output projection is not recomputed
    assert remat.remat == 2 * ((encoder - 10 * fc2) + (decoder - 6 * fc2))
    assert remat.total == step.total + remat.remat


def test_swiglu_mlp_and_register_tokens():
    gated = _tiny_config(dim=64, num_heads=4, act="silu", gated_mlp=True, num_register_tokens=2)
    plain = _tiny_config(dim=64, num_heads=4)
    kwargs = dict(batch_size=1, num_encoder_tokens=10, num_decoder_tokens=6,
                  input_tokens={"tok_depth@224": 10}, target_tokens={"tok_depth@224": 6})
    g, p = flops.train_flops_per_step(gated, **kwargs), flops.train_flops_per_step(plain, **kwargs)
    # SwiGLU: hidden int(2·256/3) = 170, three matrices; 12 encoder tokens with the 2 registers.
    t = 12
    encoder = 2 * t * 64 * 192 + 4 * t * t * 64 + 2 * t * 64 * 64 + 2 * t * 64 * 170 * 3
    assert g.forward_by_part["encoder"] == encoder
    assert g.forward_by_part["context_projection"] == 2 * t * 64 * 64
    plain_encoder = 2 * 10 * 64 * 192 + 4 * 100 * 64 + 2 * 10 * 64 * 64 + 2 * 10 * 64 * 256 * 2
    assert p.forward_by_part["encoder"] == plain_encoder


def test_default_split_is_even_and_capped_by_modality_size():
    split = flops.split_tokens(256, ["metadata", "caption", "tok_rgb@224"])
    assert split == {"metadata": 40, "caption": 108, "tok_rgb@224": 108}  # metadata holds 40 tokens
    config = _tiny_config(dim=64, num_heads=4)
    default = flops.train_flops_per_step(config, batch_size=1, num_encoder_tokens=8, num_decoder_tokens=8)
    explicit = flops.train_flops_per_step(config, batch_size=1, num_encoder_tokens=8, num_decoder_tokens=8,
                                          input_tokens={"rgb@224": 4, "tok_depth@224": 4},
                                          target_tokens=["tok_depth@224", "caption"])
    assert default == explicit


@pytest.mark.parametrize("split, message", [
    ({"rgb@224": 3, "tok_depth@224": 4}, "sums to 7"),
    ({"tok_rgb@224": 8}, "not among"),
    (["rgb@224", "det"], "not among"),
    ({"rgb@224": 10, "tok_depth@224": -2}, "negative"),
])
def test_bad_token_splits(split, message):
    with pytest.raises(ValueError, match=message):
        flops.train_flops_per_step(_tiny_config(), batch_size=1, num_encoder_tokens=8, num_decoder_tokens=8,
                                   input_tokens=split)


def test_bad_budgets():
    with pytest.raises(ValueError, match="num_decoder_tokens must be positive"):
        flops.train_flops_per_step(_tiny_config(), batch_size=1, num_encoder_tokens=8, num_decoder_tokens=0)
    with pytest.raises(ValueError, match="exceeds"):
        flops.split_tokens(300, ["metadata", "color_palette"])


@pytest.mark.parametrize("name", ["fm_base_12e_12d_swiglu_nobias", "fm_large_24e_24d_swiglu_nobias",
                                  "fm_xlarge_24e_24d_swiglu_nobias"])
def test_about_three_n_d(name):
    """DESIGN.md: training costs about 3·N·D, since each token meets the encoder or the decoder."""
    config = variant_config(name)
    step = flops.train_flops_per_step(config, batch_size=1, num_encoder_tokens=128, num_decoder_tokens=128)
    per_token = step.total / 256 / flops.param_counts(config).non_embedding
    assert 3.0 < per_token < 3.4


def _dot_flops(jaxpr) -> int:
    """Matmul FLOPs of a jaxpr, recursing into sub-jaxprs (2 x output size x contracted size)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * eqn.outvars[0].aval.size * math.prod(lhs[i] for i in contracting)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _dot_flops(sub)
    return total


# GELU with biases and a sequence target (teacher-forced token lookups); SwiGLU + qk-norm with
# rematerialised blocks. Layer loops are unrolled, 2 layers each.
XLA_CASES = {
    "gelu": (dict(act="gelu", gated_mlp=False), False),
    "swiglu_qknorm_remat": (dict(act="silu", gated_mlp=True, qk_norm=True, qkv_bias=False, proj_bias=False,
                                 mlp_bias=False, norm_bias=False), True),
}


@pytest.mark.parametrize("case", sorted(XLA_CASES))
def test_matches_xla_cost_analysis_of_a_reference_step(case):
    """The analytic count equals the matmul FLOPs of a pure-JAX 4M loss + gradient exactly, and
    XLA's cost analysis of the compiled program is within 10% above it: the difference is the
    element-wise work (norms, softmax, activations, residual adds, loss) that model FLOPs leave out."""
    fields, remat = XLA_CASES[case]
    inputs, targets = {"rgb@224": 16, "tok_depth@224": 8}, {"tok_semseg@224": 12, "caption": 8}
    config = ModelConfig(dim=128, encoder_depth=2, decoder_depth=2, num_heads=4, domains_in=tuple(inputs),
                         domains_out=tuple(targets), **fields)
    batch_size = 4
    params = jax.eval_shape(lambda: reference_4m.init_params(jax.random.key(0), config, inputs, targets))
    batch = jax.eval_shape(lambda: reference_4m.example_batch(jax.random.key(1), config, batch_size,
                                                              inputs, targets))
    grad_fn = jax.grad(reference_4m.loss_fn)
    expected = flops.train_flops_per_step(config, batch_size=batch_size, num_encoder_tokens=24,
                                          num_decoder_tokens=20, input_tokens=inputs, target_tokens=targets,
                                          remat=remat)

    traced = jax.make_jaxpr(grad_fn, static_argnums=(2, 3))(params, batch, config, remat)
    assert _dot_flops(traced.jaxpr) == pytest.approx(expected.total, rel=1e-12)

    compiled = jax.jit(grad_fn, static_argnums=(2, 3)).lower(params, batch, config, remat).compile()
    xla_flops = compiled.cost_analysis()["flops"]
    assert expected.total <= xla_flops <= 1.10 * expected.total, (xla_flops, expected.total)



@pytest.mark.parametrize("variant", ["fm_test_tiny_gelu",
                                     pytest.param("fm_test_tiny_swiglu_qknorm", marks=pytest.mark.slow)])
def test_matches_xla_cost_analysis_of_the_compiled_train_step(repo_dir, tmp_path, variant):
    """The trainer's MFU numerator (model FLOPs: forward + backward) against XLA's cost analysis of
    the real train step (fourm_jax/train/step.py) on one device, layers unrolled. Two differences,
    both accounted for here: the grouped output heads loop over chunks of head_chunk_size sorted
    tokens per modality and XLA counts a loop body once, so it sees one full chunk per modality
    where the model computes that modality's target tokens (the count assumes an even split); and
    XLA also counts the element-wise work that model FLOPs leave out (norms, softmax, activations,
    residuals, loss) and AdamW's update (about 20 FLOPs per parameter): at most 10% + 20 x params."""
    from fourm_jax import configs, modalities, sharding
    from fourm_jax.model.config import variant_config
    from fourm_jax.train import step, trainer
    from fourm_jax.train.config import RunConfig

    config = configs.load(str(repo_dir / "tests/train/tiny_run.py"), [f"data.datasets.tiny.path={tmp_path}"])
    model = variant_config(variant, domains_in=config.model.domains_in, domains_out=config.model.domains_out,
                           dim=128, num_heads=4, encoder_depth=2, decoder_depth=2, scan_layers=False)
    config.model = model.to_config()
    run = RunConfig.from_config(config)
    program = step.build_program(run, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
    compiled = program.train_step.lower(program.abstract_state, program.abstract_buffers,
                                        program.abstract_batch).compile()
    xla_flops = compiled.cost_analysis()["flops"]

    model_flops = trainer.model_flops_per_step(run)
    targets = flops.split_tokens(run.train.num_target_tokens, model.domains_out)
    head_work = {name: 3 * 2 * model.dim * modalities.get(name).vocab_size for name in model.domains_out}
    heads_counted = sum(work * run.global_batch * targets[name] for name, work in head_work.items())
    heads_as_xla_sees = sum(work * model.head_chunk_size for work in head_work.values())
    expected = model_flops - heads_counted + heads_as_xla_sees
    params = flops.param_counts(model, tie_output_embeddings=model.tie_output_embeddings).total
    print(f"{variant}: XLA {xla_flops:.4g}, expected {expected:.4g} ({xla_flops / expected - 1:+.1%}), "
          f"model FLOPs {model_flops:.4g}")
    assert expected <= xla_flops <= 1.10 * expected + 20 * params, (xla_flops, expected, model_flops)
