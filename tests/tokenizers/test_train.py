"""Training core: a tiny ViT VQ-VAE learns synthetic shapes; EMA state, resume, Memcodes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fourm_jax.model.config import ConfigError
from fourm_jax.tokenizers import VQVAE, NetConfig, TokenizerConfig, metrics, train

SIZE, BATCH = 32, 32


def shapes(seed: int, n: int) -> np.ndarray:
    """Flat-coloured discs and squares on a flat background, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.empty((n, SIZE, SIZE, 3), np.float32)
    for image in images:
        image[:] = rng.uniform(-1, 1, 3)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, SIZE, 2)
            r = rng.uniform(3, SIZE / 3)
            disc = rng.random() < 0.5
            square = (abs(yy - cy) < r) & (abs(xx - cx) < r)
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r if disc else square
            image[inside] = rng.uniform(-1, 1, 3)
    return images


class Setup:
    """A tiny RGB tokenizer (4x4 tokens of 8x8 patches), its optimizer and compiled step."""

    def __init__(self, vit: NetConfig, codebook_size: int, steps: int, model_ema_decay: float | None):
        config = TokenizerConfig(modality="rgb", image_size=SIZE, patch_size=8, encoder=vit, decoder=vit,
                                 codebook_size=codebook_size, latent_dim=16, ema_decay=0.9)
        self.tok = VQVAE(train.with_dead_code_threshold(config, BATCH, SIZE))
        schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 20, steps)
        self.optimizer = optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=0.05)
        self.loss_config = train.LossConfig("mse", 1.0, model_ema_decay)
        self.step = jax.jit(train.make_train_step(self.tok, self.optimizer, self.loss_config))
        self.data = shapes(0, 1024)

    def init(self, seed: int = 0) -> train.TrainState:
        return train.init_train_state(self.tok, self.optimizer, jax.random.key(seed), self.loss_config)

    def learn(self, steps: int) -> tuple[dict, dict, dict]:
        """(held-out metrics before, after, last step metrics)."""
        evaluate = jax.jit(train.make_eval_step(self.tok))
        held_out = shapes(1, 128)
        state = self.init()
        before = metrics.summarize(evaluate(state.variables, held_out))
        rng = np.random.default_rng(0)
        for _ in range(steps):
            state, step_metrics = self.step(state, self.data[rng.integers(0, len(self.data), BATCH)],
                                             jax.random.key(0))
        return before, metrics.summarize(evaluate(state.variables, held_out)), step_metrics


@pytest.fixture(scope="module")
def tiny() -> Setup:
    return Setup(NetConfig("vit", 48, 1, 4), codebook_size=32, steps=250, model_ema_decay=0.5)


def test_a_tiny_tokenizer_learns(tiny):
    before, after, last = tiny.learn(250)
    assert after["mse"] < before["mse"] / 5 and after["psnr"] > before["psnr"] + 6
    assert after["codebook_usage"] > 0.8  # dead-code restarts keep the codes in use
    assert float(last["dead_codes"]) < 4 and np.isfinite(float(last["loss"]))


@pytest.mark.slow
def test_a_larger_tokenizer_learns_longer():
    setup = Setup(NetConfig("vit", 64, 2, 4), codebook_size=128, steps=600, model_ema_decay=None)
    before, after, _ = setup.learn(600)
    assert after["psnr"] > before["psnr"] + 10 and after["psnr"] > 16
    assert after["codebook_usage"] > 0.8 and after["perplexity"] > 50


def test_step_updates_codebook_by_ema_not_gradients(tiny):
    state = tiny.init()
    new_state, step_metrics = tiny.step(state, tiny.data[:BATCH], jax.random.key(0))
    old_codebook, new_codebook = state.buffers["quantizer"], new_state.buffers["quantizer"]
    # EMA counts: decay 0.9 of zeros plus 10% of this batch's counts (32 images x 16 tokens).
    np.testing.assert_allclose(new_codebook["cluster_size"].sum(), 0.1 * BATCH * 16, rtol=1e-5)
    assert not np.allclose(new_codebook["embed"], old_codebook["embed"])
    np.testing.assert_array_equal(new_state.buffers["encoder"]["pos_emb"],
                                  state.buffers["encoder"]["pos_emb"])
    dead = int((new_codebook["cluster_size"] < tiny.tok.config.threshold_ema_dead_code).sum())
    assert int(new_state.step) == 1 and int(step_metrics["dead_codes"]) == dead > 0
    # The model EMA moved halfway (decay 0.5) towards the new parameters.
    expected = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, state.params, new_state.params)
    ema = new_state.ema_variables["params"]
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_steps_depend_only_on_state_batch_and_seed(tiny):
    """Resuming from a saved state draws the same dead-code restarts as an uninterrupted run."""
    x = tiny.data[:BATCH]
    first = tiny.step(tiny.init(), x, jax.random.key(3))[0]
    straight = tiny.step(first, x, jax.random.key(3))[0]
    restored = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), first)  # via the host, as a checkpoint
    resumed = tiny.step(restored, x, jax.random.key(3))[0]
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_memcodes_trains_through_gumbel_softmax():
    mlp = NetConfig("bottleneck_mlp", 32, 1, 0, 2)
    config = TokenizerConfig(modality="vector", n_channels=12, encoder=mlp, decoder=mlp,
                             quant_type="memcodes", num_codebooks=4, codebook_size=16, latent_dim=16)
    tok, optimizer = VQVAE(config), optax.adam(1e-3)
    loss_config = train.LossConfig("cosine_1d", 1.0, model_ema_decay=None)
    state = train.init_train_state(tok, optimizer, jax.random.key(0), loss_config)
    step = jax.jit(train.make_train_step(tok, optimizer, loss_config))
    x = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
    losses = []
    for i in range(30):
        state, step_metrics = step(state, x, jax.random.key(i))
        losses.append(float(step_metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0] and float(step_metrics["commitment"]) == 0.0
    assert state.ema_variables is None and "quantizer" not in state.buffers


def test_lucid_with_several_heads_updates_one_shared_codebook():
    vit = NetConfig("vit", 32, 1, 2)
    config = TokenizerConfig(modality="rgb", image_size=16, patch_size=8, encoder=vit, decoder=vit,
                             num_codebooks=2, codebook_size=8, latent_dim=4, ema_decay=0.5)
    tok, optimizer = VQVAE(config), optax.adam(1e-3)
    loss_config = train.LossConfig("mse", 1.0, model_ema_decay=None)
    state = train.init_train_state(tok, optimizer, jax.random.key(0), loss_config)
    x = shapes(0, 4)[:, :16, :16]
    new_state, _ = jax.jit(train.make_train_step(tok, optimizer, loss_config))(state, x, jax.random.key(0))
    tokens = np.asarray(tok.encode(state.variables, x))  # [4, 2 heads, 2, 2]
    counts = np.bincount(tokens.ravel(), minlength=8)
    np.testing.assert_allclose(new_state.buffers["quantizer"]["cluster_size"], 0.5 * counts, rtol=1e-6)


def test_loss_config_validation_and_dead_code_threshold():
    with pytest.raises(ConfigError, match="train.loss_fn"):
        train.LossConfig("huber")
    assert train.LossConfig.from_config(dict(loss_fn="l1", lr=0.1)).loss_fn == "l1"
    # ml-4m: batch 256 of 14x14 tokens, 16k codes, coefficient 32.
    assert train.dead_code_threshold(256, 196, 16384, 32) == pytest.approx(256 * 196 / 16384 / 32)
