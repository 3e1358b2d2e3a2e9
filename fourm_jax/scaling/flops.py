"""Analytic training FLOPs per step and parameter counts of a 4M model.

4M sends `num_encoder_tokens` tokens per example through the encoder and `num_decoder_tokens`
through the decoder (which also cross-attends to the encoder tokens), so training costs about
3·N·D FLOPs, not 6·N·D: each token meets only about half the parameters. This module counts the
matrix multiplications exactly from the architecture (../shared/reference/ml4m-model.md sections
1-6); the trainer's MFU, `tools/bench.py` and the scaling-law sweeps all use it.

Counting rules (a multiply-add is 2 FLOPs; T = encoder tokens (+ register tokens), M = decoder
tokens, D = dim, F = MLP hidden width, per example and layer):

    encoder layer   qkv 6·T·D² + scores 2·T²·D + attention·values 2·T²·D + proj 2·T·D²
                    + MLP 4·T·D·F (GELU) or 6·T·D·F (SwiGLU: three matrices)
    context proj    2·T·D²  (once, before the decoder)
    decoder layer   self-attention as above with M tokens
                    + cross-attention: q 2·M·D², kv 4·T·D², scores 2·M·T·D, values 2·M·T·D,
                      proj 2·M·D²
                    + MLP with M tokens
    input embedding pixel patches 2·(C·P²)·D per token, T5 features 2·E·D per token; token
                    lookups and the sin-cos/modality embedding adds are ~0
    output heads    2·D·V_m per decoder token of target modality m (never all heads on all tokens)

Backward = 2 x forward (gradients with respect to both operands of every matmul), except the input
patch/feature projections, whose inputs are data: only the weight gradient, 1 x forward.
Rematerialisation (`jax.checkpoint` on every encoder/decoder block, nothing saved) recomputes each
block's forward in the backward pass, except the MLP output projection, whose result the backward
pass never needs (XLA removes it as dead code; tests/scaling/test_flops.py checks this).
Element-wise work (norms, softmax, activations, residual adds, the loss, the optimizer) is not
counted: MFU counts model matmul FLOPs, the convention of PaLM and MaxText. The attention is
counted dense (4M's decoder masks attention to tokens of the same modality, but computes it all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from fourm_jax import modalities
from fourm_jax.model.config import ModelConfig

TokenSplit = Mapping[str, float] | Sequence[str] | None


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """Training FLOPs of one step (all examples of the global batch, all devices together).

    forward_by_part splits `forward` into input_embedding, encoder, context_projection, decoder
    and output_heads.
    """

    forward: float
    backward: float
    remat: float
    forward_by_part: Mapping[str, float]

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.remat


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameter counts. `non_embedding` is the trunk (blocks, final norms, context projection),
    ml-4m's "core" count; `embedding` is everything per modality plus the mask/register tokens."""

    non_embedding: int
    embedding: int
    by_part: Mapping[str, int]

    @property
    def total(self) -> int:
        return self.non_embedding + self.embedding


def split_tokens(budget: float, names: Sequence[str], split: TokenSplit = None) -> dict[str, float]:
    """Tokens per example of each modality in a budget of `budget` tokens.

    `split` is either a mapping name -> tokens per example (may be fractional: an expectation over
    random masks; must sum to `budget`), a list of names sharing the budget, or None for all of
    `names`. Shared budgets are split evenly, except that no modality gets more than its
    `max_tokens` (the surplus goes to the others), as 4M's masking caps a modality's budget at its
    size.
    """
    if isinstance(split, Mapping):
        unknown = sorted(set(split) - set(names))
        if unknown:
            raise ValueError(f"token split names {unknown}, which are not among {list(names)}")
        negative = sorted(name for name, count in split.items() if count < 0)
        if negative:
            raise ValueError(f"token split gives negative token counts to {negative}")
        if abs(sum(split.values()) - budget) > 1e-6 * max(budget, 1):
            raise ValueError(f"token split {dict(split)} sums to {sum(split.values())}, "
                             f"not to the token budget {budget}")
        return {name: float(count) for name, count in split.items()}
    sharing = list(names if split is None else [split] if isinstance(split, str) else split)
    unknown = sorted(set(sharing) - set(names))
    if unknown:
        raise ValueError(f"token split names {unknown}, which are not among {list(names)}")
    if not sharing:
        raise ValueError("token split is empty")
    capacity = {name: float(modalities.get(name).max_tokens) for name in sharing}
    if budget > sum(capacity.values()):
        raise ValueError(f"token budget {budget} exceeds the {sum(capacity.values()):g} tokens "
                         f"that {sharing} hold")
    counts, left, open_ = {}, float(budget), sorted(sharing, key=capacity.get)
    while open_:
        share = left / len(open_)
        name = open_[0]
        if capacity[name] <= share:
            counts[name] = capacity[name]
            left -= capacity[name]
            open_.pop(0)
        else:
            counts.update({name: share for name in open_})
            break
    return {name: counts[name] for name in sharing}


def _mlp_flops(tokens: float, config: ModelConfig) -> float:
    matrices = 3 if config.gated_mlp else 2
    return 2 * matrices * tokens * config.dim * config.mlp_hidden_dim


def _self_attention_flops(tokens: float, dim: int) -> float:
    return 8 * tokens * dim**2 + 4 * tokens**2 * dim


def _cross_attention_flops(queries: float, keys: float, dim: int) -> float:
    return 4 * queries * dim**2 + 4 * keys * dim**2 + 4 * queries * keys * dim


def _input_embedding_flops(name: str, tokens: float, dim: int) -> float:
    modality = modalities.get(name)
    if modality.kind is modalities.Kind.IMAGE_PIXELS:
        return 2 * tokens * modality.num_channels * modality.patch_size**2 * dim
    if modality.kind is modalities.Kind.SEQUENCE_EMBEDDING:
        return 2 * tokens * modality.embedding_dim * dim
    return 0.0


def train_flops_per_step(config: ModelConfig, *, batch_size: int, num_encoder_tokens: int,
                         num_decoder_tokens: int, input_tokens: TokenSplit = None,
                         target_tokens: TokenSplit = None, remat: bool = False) -> StepFlops:
    """FLOPs of one training step over `batch_size` examples (see the module docstring).

    input_tokens / target_tokens say which modalities fill the encoder / decoder budgets (see
    `split_tokens`; default: all of config.domains_in / domains_out, evenly). Only pixel and
    feature inputs cost FLOPs to embed; each target modality's head costs 2·D·vocab per token.
    """
    for field, value in (("batch_size", batch_size), ("num_encoder_tokens", num_encoder_tokens),
                         ("num_decoder_tokens", num_decoder_tokens)):
        if not value > 0:
            raise ValueError(f"{field} must be positive, got {value!r}")
    dim = config.dim
    inputs = split_tokens(num_encoder_tokens, config.domains_in, input_tokens)
    targets = split_tokens(num_decoder_tokens, config.domains_out, target_tokens)
    enc_len = num_encoder_tokens + config.num_register_tokens
    dec_len = num_decoder_tokens

    encoder_layer = _self_attention_flops(enc_len, dim) + _mlp_flops(enc_len, config)
    decoder_layer = (_self_attention_flops(dec_len, dim) + _cross_attention_flops(dec_len, enc_len, dim)
                     + _mlp_flops(dec_len, config))
    per_example = {
        "input_embedding": sum(_input_embedding_flops(name, n, dim) for name, n in inputs.items()),
        "encoder": config.encoder_depth * encoder_layer,
        "context_projection": 2 * enc_len * dim**2,
        "decoder": config.decoder_depth * decoder_layer,
        "output_heads": sum(2 * n * dim * modalities.get(name).vocab_size for name, n in targets.items()),
    }
    forward_by_part = {part: batch_size * flops for part, flops in per_example.items()}
    forward = sum(forward_by_part.values())
    backward = 2 * forward - forward_by_part["input_embedding"]
    recompute = 0.0
    if remat:
        mlp_out = 2 * config.dim * config.mlp_hidden_dim  # per token; its output is not needed
        recompute = batch_size * (config.encoder_depth * (encoder_layer - mlp_out * enc_len)
                                  + config.decoder_depth * (decoder_layer - mlp_out * dec_len))
    return StepFlops(forward=forward, backward=backward, remat=recompute,
                     forward_by_part=forward_by_part)


def _norm_params(config: ModelConfig, width: int) -> int:
    return width * (2 if config.norm_bias else 1)


def _linear_params(fan_in: int, fan_out: int, bias: bool) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def _attention_params(config: ModelConfig) -> int:
    dim = config.dim
    count = 3 * dim * dim + (3 * dim if config.qkv_bias else 0) + _linear_params(dim, dim, config.proj_bias)
    if config.qk_norm:
        count += 2 * _norm_params(config, config.head_dim)
    return count


def _mlp_params(config: ModelConfig) -> int:
    dim, hidden, bias = config.dim, config.mlp_hidden_dim, config.mlp_bias
    up = _linear_params(dim, hidden, bias) * (2 if config.gated_mlp else 1)  # fc1 (+ fc3, SwiGLU)
    return up + _linear_params(hidden, dim, bias)


def _encoder_embedding_params(name: str, dim: int) -> int:
    modality = modalities.get(name)
    count = dim  # modality embedding
    if modality.kind is modalities.Kind.IMAGE_PIXELS:
        count += modality.num_channels * modality.patch_size**2 * dim
    elif modality.kind is modalities.Kind.SEQUENCE_EMBEDDING:
        count += _linear_params(modality.embedding_dim, dim, bias=True)
    else:
        count += modality.vocab_size * dim
    if modality.pos_emb is modalities.PosEmb.LEARNED:
        count += modality.max_tokens * dim
    return count


def _decoder_embedding_params(name: str, config: ModelConfig, tie_output_embeddings: bool) -> int:
    modality, dim = modalities.get(name), config.dim
    shared_mod_emb = config.share_modality_embeddings and name in config.domains_in
    count = 0 if shared_mod_emb else dim
    count += modality.vocab_size * dim * (1 if tie_output_embeddings else 2)
    if modality.pos_emb is modalities.PosEmb.LEARNED:
        count += modality.max_tokens * dim
    return count


def param_counts(config: ModelConfig, *, tie_output_embeddings: bool = True) -> ParamCounts:
    """Parameter counts of the 4M model a config builds.

    tie_output_embeddings: the decoder's output projection shares the token embedding matrix (ml-4m's
    training default); False counts both, as in ml-4m's released checkpoints. Sin-cos position
    tables are buffers, not parameters; learned ones (tok_*_global) count as embedding parameters.
    """
    dim = config.dim
    encoder_block = 2 * _norm_params(config, dim) + _attention_params(config) + _mlp_params(config)
    decoder_block = (4 * _norm_params(config, dim) + _attention_params(config)
                     + _attention_params(config) + _mlp_params(config))  # self + cross attention
    by_part = {
        "encoder": config.encoder_depth * encoder_block + _norm_params(config, dim),
        "context_projection": _linear_params(dim, dim, bias=True),  # always has a bias in ml-4m
        "decoder": config.decoder_depth * decoder_block + _norm_params(config, dim),
        "encoder_embeddings": sum(_encoder_embedding_params(n, dim) for n in config.domains_in),
        "decoder_embeddings": sum(_decoder_embedding_params(n, config, tie_output_embeddings)
                                  for n in config.domains_out),
        "mask_and_register_tokens": dim * (1 + config.num_register_tokens),
    }
    non_embedding = by_part["encoder"] + by_part["context_projection"] + by_part["decoder"]
    return ParamCounts(non_embedding=non_embedding, embedding=sum(by_part.values()) - non_embedding,
                       by_part=by_part)
