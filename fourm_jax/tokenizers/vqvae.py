"""The VQ-VAE tokenizer: pure functions over a `{'params', 'buffers'}` pytree.

    tok = VQVAE(config)
    variables = tok.init(jax.random.key(0))       # or fourm_jax.tokenizers.ml4m.load(...)
    tokens = tok.encode(variables, x)              # [B, h, w] int32 ([B, heads, h, w] if heads > 1)
    x_hat = tok.decode(variables, tokens)          # [B, H, W, C] (semseg: logits; vector: [B, C])

`params` hold what the optimizer trains; `buffers` what it must not touch: the fixed sin-cos
position tables, the lucid codebook (`embed`, moved by EMA) and its EMA counts (`cluster_size`).
Inputs are what ml-4m's `tokenize` takes, channels-last (see fourm_jax.tokenizers.inputs for the
per-modality normalisation). `tokens.reshape(B, -1)` is the token sequence 4M consumes.

Decoders share one calling convention, `decode(variables, tokens, *, rng=None, **options)`: the
deterministic ViT/MLP decoders take no options and ignore `rng`; a diffusion decoder (ml-4m's DiVAE)
takes its sampling options (steps, scheduler, output size) and needs `rng` (`needs_rng`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Protocol

import jax
import jax.numpy as jnp

from fourm_jax.tokenizers import inputs, layers, quantizers, vit
from fourm_jax.tokenizers.config import TokenizerConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_jit_method = functools.partial(jax.jit, static_argnums=0)


class Tokenizer(Protocol):
    """What callers (pretokenization, generation, the trainer) use of any modality tokenizer."""

    config: TokenizerConfig
    needs_rng: ClassVar[bool]  # True for decoders that sample (diffusion)

    def init(self, rng: jax.Array) -> dict: ...

    def encode(self, variables: dict, x: jax.Array) -> jax.Array: ...

    def decode(self, variables: dict, tokens: jax.Array, *, rng: jax.Array | None = None,
               **options) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class VQVAE:
    """ml-4m's VQ (encoder + quant_proj + quantizer) and VQVAE (+ post_quant_proj + decoder).

    Hashable by its config, so its methods are jit-compiled with the tokenizer static; calling them
    inside another jit (a train step, a sharded encode) inlines them.
    """

    config: TokenizerConfig
    needs_rng: ClassVar[bool] = False

    # ------------------------------------------------------------------ parameters

    def spec(self) -> dict:
        """`{'params', 'buffers'}` as a tree of layers.Param (and fixed numpy tables)."""
        c = self.config
        params, buffers = {}, {}
        if c.n_labels is not None:
            params["cls_emb"] = {"embedding": layers.Param((c.n_labels, c.n_channels), "normal")}
        if c.encoder.type == "vit":
            params["encoder"], buffers["encoder"] = vit.encoder_spec(
                in_channels=c.n_channels, patch_size=c.patch_size, grid=c.enc_grid, dim=c.encoder.dim,
                depth=c.encoder.depth, mlp_ratio=c.encoder.mlp_ratio, patch_proj=c.patch_proj,
                post_mlp=c.post_mlp)
        else:
            params["encoder"] = layers.bottleneck_mlp_spec(c.n_channels, c.encoder.dim, c.encoder.dim,
                                                           c.encoder.depth, int(c.encoder.mlp_ratio))
        params["quant_proj"] = layers.dense_spec(c.encoder.dim, c.latent_dim)
        if c.quant_type == "memcodes":
            head_dim = c.latent_dim // c.num_codebooks
            mix = layers.Param((c.num_codebooks, head_dim, head_dim), "uniform", head_dim ** -0.5)
            codes = layers.Param((c.num_codebooks, c.codebook_size, head_dim), "normal")
            params["quantizer"] = {"codes": codes, "to_k": mix, "to_v": mix}
        else:
            if c.num_codebooks > 1:  # lucid projects the latent to one latent_dim vector per head
                width = c.latent_dim * c.num_codebooks
                params["quantizer"] = {"project_in": layers.dense_spec(c.latent_dim, width),
                                       "project_out": layers.dense_spec(width, c.latent_dim)}
            # kaiming-uniform rows, normalised in init
            buffers["quantizer"] = {"embed": layers.Param((c.codebook_size, c.latent_dim), "uniform"),
                                    "cluster_size": layers.Param((c.codebook_size,))}
        if c.decoder is not None:
            params["post_quant_proj"] = layers.dense_spec(c.latent_dim, c.decoder.dim)
            if c.decoder.type == "vit":
                params["decoder"], buffers["decoder"] = vit.decoder_spec(
                    out_channels=c.out_channels, patch_size=c.dec_patch_size, grid=c.dec_grid,
                    dim=c.decoder.dim, depth=c.decoder.depth, mlp_ratio=c.decoder.mlp_ratio,
                    patch_proj=c.patch_proj, post_mlp=c.post_mlp, out_conv=c.out_conv)
            else:
                params["decoder"] = layers.bottleneck_mlp_spec(c.decoder.dim, c.out_channels, c.decoder.dim,
                                                               c.decoder.depth, int(c.decoder.mlp_ratio))
        return {"params": params, "buffers": buffers}

    @_jit_method
    def init(self, rng: jax.Array) -> dict:
        """Fresh variables with ml-4m's initialisation (xavier linears, sin-cos tables, unit-norm
        random codebook). Under jax.jit with out_shardings it creates them sharded."""
        variables = layers.materialise(self.spec(), rng)
        if "quantizer" in variables["buffers"]:
            codebook = variables["buffers"]["quantizer"]
            codebook["embed"] = quantizers.l2_normalize(codebook["embed"])
        return variables

    # ------------------------------------------------------------------ encoder side

    @_jit_method
    def prepare_input(self, variables: dict, x: jax.Array) -> jax.Array:
        """ml-4m's `prepare_input`: class ids -> embeddings (semseg), vectors -> 1x1 maps,
        optional ImageNet de-standardisation (`undo_std`)."""
        c = self.config
        inputs.check_input_shape(c, x.shape, x.dtype, "tokenizer input")
        if c.modality == "vector":
            x = x.reshape(x.shape[0], 1, 1, x.shape[-1])
        if c.undo_std:
            x = 2.0 * (x * jnp.asarray(IMAGENET_STD) + jnp.asarray(IMAGENET_MEAN)) - 1.0
        if c.n_labels is not None:
            x = variables["params"]["cls_emb"]["embedding"][x]
        return x.astype(jnp.float32)

    @_jit_method
    def encoder_features(self, variables: dict, x: jax.Array) -> jax.Array:
        """Encoder output before quant_proj `[B, h, w, D]` (input already through prepare_input)."""
        c = self.config
        params = variables["params"]["encoder"]
        if c.encoder.type == "vit":
            return vit.encoder(params, variables["buffers"]["encoder"], x, patch_size=c.patch_size,
                               num_heads=c.encoder.num_heads, patch_proj=c.patch_proj)
        return layers.bottleneck_mlp(params, x)

    @_jit_method
    def encode_latents(self, variables: dict, x: jax.Array) -> jax.Array:
        """Pre-quantization latents `[B, h, w, latent_dim]` of a model input."""
        h = self.encoder_features(variables, self.prepare_input(variables, x))
        return layers.dense(variables["params"]["quant_proj"], h)

    @_jit_method
    def quantize(self, variables: dict, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(quantized `[B, h, w, latent_dim]`, tokens) of latents, as ml-4m's quantizer in eval mode."""
        c = self.config
        params_q = variables["params"].get("quantizer", {})
        if c.quant_type == "memcodes":
            quant, ids = quantizers.memcodes_quantize(params_q, z)
        else:
            quant, ids = quantizers.vq_lookup(variables["buffers"]["quantizer"]["embed"],
                                              self._codebook_latents(params_q, z), c.norm_codes)
            quant = self._heads_out(params_q, quant)
        return quant, self._token_layout(ids)

    def quantize_for_training(self, variables: dict, z: jax.Array, rng: jax.Array) -> dict:
        """The quantizer in training mode, as ml-4m runs it in `model.train()`.

        Returns `quant` (straight-through: forward value of the codes, gradient of the latents),
        `tokens`, `commitment` (the weighted commitment loss `w * MSE(sg(q), z)`; 0 for Memcodes),
        and for the lucid codebook's EMA update and dead-code restarts the vectors it compared,
        `latents` `[M, latent_dim]`, with their code `ids` `[M]` (None for Memcodes, which samples
        with a hard Gumbel-softmax from `rng`).
        """
        c = self.config
        params_q = variables["params"].get("quantizer", {})
        if c.quant_type == "memcodes":
            quant, ids = quantizers.memcodes_quantize(params_q, z, rng)
            return {"quant": quant, "tokens": self._token_layout(ids), "commitment": jnp.zeros(()),
                    "latents": None, "ids": None}
        latents = self._codebook_latents(params_q, z)
        codes, ids = quantizers.vq_lookup(variables["buffers"]["quantizer"]["embed"], latents, c.norm_codes)
        codes = jax.lax.stop_gradient(codes)
        commitment = c.commitment_weight * jnp.mean(jnp.square(codes - latents))
        quant = self._heads_out(params_q, latents + jax.lax.stop_gradient(codes - latents))
        return {"quant": quant, "tokens": self._token_layout(ids), "commitment": commitment,
                "latents": latents.reshape(-1, latents.shape[-1]), "ids": ids.reshape(-1)}

    @_jit_method
    def encode(self, variables: dict, x: jax.Array) -> jax.Array:
        """Token ids of a batch of model inputs (ml-4m's `tokenize`), int32."""
        return self.quantize(variables, self.encode_latents(variables, x))[1]

    # ------------------------------------------------------------------ decoder side

    @_jit_method
    def lookup(self, variables: dict, tokens: jax.Array) -> jax.Array:
        """Quantized vectors `[B, h, w, latent_dim]` of tokens (ml-4m's `tokens_to_embedding`)."""
        c = self.config
        ids = tokens.astype(jnp.int32)
        if c.num_codebooks > 1:
            ids = jnp.moveaxis(ids, 1, -1)  # [B, heads, h, w] -> [B, h, w, heads]
        params_q = variables["params"].get("quantizer", {})
        if c.quant_type == "memcodes":
            return quantizers.memcodes_lookup(params_q, ids if c.num_codebooks > 1 else ids[..., None])
        embed = variables["buffers"]["quantizer"]["embed"]
        return self._heads_out(params_q, embed[ids])

    @_jit_method
    def decode_quant(self, variables: dict, quant: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
        """Decoder output of quantized vectors (ml-4m's `decode_quant`); `rng` is unused here."""
        del rng
        c = self.config
        if c.decoder is None:
            raise ValueError("this tokenizer is encoder-only (config.decoder is None); it cannot decode")
        h = layers.dense(variables["params"]["post_quant_proj"], quant)
        params = variables["params"]["decoder"]
        if c.decoder.type == "vit":
            out = vit.decoder(params, variables["buffers"]["decoder"], h, patch_size=c.dec_patch_size,
                              num_heads=c.decoder.num_heads, patch_proj=c.patch_proj)
        else:
            out = layers.bottleneck_mlp(params, h)
        if c.modality == "vector":
            out = out.reshape(out.shape[0], -1)
        return out

    @_jit_method
    def decode(self, variables: dict, tokens: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
        """Decoder output of tokens: images `[B, H, W, C]`, semseg logits `[B, H, W, n_labels]`,
        vectors `[B, C]`."""
        return self.decode_quant(variables, self.lookup(variables, tokens), rng=rng)

    @_jit_method
    def autoencode(self, variables: dict, x: jax.Array) -> jax.Array:
        return self.decode_quant(variables, self.quantize(variables, self.encode_latents(variables, x))[0])

    # ------------------------------------------------------------------ helpers

    def _codebook_latents(self, params_q: dict, z: jax.Array) -> jax.Array:
        """What the lucid codebook compares: with several heads, `[..., heads, latent_dim]` after
        `project_in`; l2-normalised with `norm_latents`."""
        c = self.config
        if c.num_codebooks > 1:
            z = layers.dense(params_q["project_in"], z)
            z = z.reshape(*z.shape[:-1], c.num_codebooks, c.latent_dim)
        return quantizers.l2_normalize(z) if c.norm_latents else z

    def _heads_out(self, params_q: dict, quant: jax.Array) -> jax.Array:
        if self.config.num_codebooks == 1 or self.config.quant_type == "memcodes":
            return quant
        return layers.dense(params_q["project_out"], quant.reshape(*quant.shape[:-2], -1))

    def _token_layout(self, ids: jax.Array) -> jax.Array:
        """`[B, h, w]` ids, or `[B, h, w, heads]` -> ml-4m's `[B, heads, h, w]` (squeezed when 1)."""
        if self.config.num_codebooks > 1:
            return jnp.moveaxis(ids, -1, 1)
        return ids[..., 0] if self.config.quant_type == "memcodes" else ids
