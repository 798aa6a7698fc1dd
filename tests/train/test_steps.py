"""Loss, schedule, optimizer and the jitted train/eval steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxzoo.models import GPT, GPTConfig
from flaxzoo.train.steps import (Batch, OptimizerConfig, init_train_state,
                                 learning_rate_schedule, make_eval_step, make_optimizer,
                                 make_train_step, next_token_loss)

CONFIG = GPTConfig.tiny()


def test_next_token_loss_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    total, count = next_token_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(total, (nll * weights).sum(), rtol=1e-5)
    assert float(count) == 8.0
    # Changing a padded target changes nothing.
    targets2 = targets.copy()
    targets2[0, 4] = (targets2[0, 4] + 1) % 7
    total2, _ = next_token_loss(jnp.asarray(logits), jnp.asarray(targets2), jnp.asarray(weights))
    assert float(total2) == float(total)


def test_schedule_is_linear_warmup_then_cosine():
    config = OptimizerConfig(learning_rate=1e-3, total_steps=110, warmup_steps=10,
                             final_lr_fraction=0.1)
    schedule = learning_rate_schedule(config)
    np.testing.assert_allclose(schedule(0), 0.0)
    np.testing.assert_allclose(schedule(5), 0.5e-3, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), 1e-3, rtol=1e-6)
    # Cosine from peak to 10% of peak over the remaining 100 steps.
    for step in (35, 60, 85, 110):
        frac = (step - 10) / 100
        expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + np.cos(np.pi * frac))
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-5)


@pytest.mark.parametrize("field, value", [("learning_rate", 0.0), ("total_steps", 0),
                                          ("warmup_steps", -1), ("clip_norm", 0.0),
                                          ("final_lr_fraction", 2.0)])
def test_optimizer_config_validation(field, value):
    kwargs = dict(total_steps=10)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        OptimizerConfig(**kwargs)


def test_weight_decay_skips_biases_and_norm_scales():
    config = OptimizerConfig(learning_rate=0.1, total_steps=10, warmup_steps=0, weight_decay=0.5)
    optimizer = make_optimizer(config)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], 1 - 0.1 * 0.5)  # lr * wd * param
    np.testing.assert_array_equal(new["bias"], 1.0)


@pytest.fixture(scope="module")
def setup():
    opt_config = OptimizerConfig(learning_rate=3e-3, total_steps=100, warmup_steps=0)
    optimizer = make_optimizer(opt_config)
    graphdef, state = init_train_state(GPT(CONFIG, rngs=nnx.Rngs(0)), optimizer, seed=0)
    train_step = make_train_step(graphdef, optimizer, learning_rate_schedule(opt_config))
    return graphdef, state, train_step, make_eval_step(graphdef)


def _batch(seed=0, B=4, T=12):
    tokens = np.random.default_rng(seed).integers(0, CONFIG.vocab_size, size=(B, T + 1))
    return Batch(inputs_BT=jnp.asarray(tokens[:, :-1], jnp.int32),
                 targets_BT=jnp.asarray(tokens[:, 1:], jnp.int32),
                 weights_BT=jnp.ones((B, T), jnp.float32))


def test_train_step_learns_a_fixed_batch_and_counts_steps(setup):
    graphdef, state, train_step, eval_step = setup
    state = jax.tree.map(jnp.copy, state)  # the step donates its input
    batch = _batch()
    first = None
    for _ in range(40):
        state, metrics = train_step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert int(state.step) == 40
    nll, count = eval_step(state.params, batch)
    assert float(nll / count) < 0.65 * first
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["lr"]) > 0


def test_eval_step_matches_the_model_forward(setup):
    graphdef, state, _, eval_step = setup
    batch = _batch(seed=1)
    model = nnx.merge(graphdef, state.params)
    positions = jnp.broadcast_to(jnp.arange(12), (4, 12))
    logits, _ = model(batch.inputs_BT, positions)
    expected = next_token_loss(logits, batch.targets_BT, batch.weights_BT)
    np.testing.assert_allclose(eval_step(state.params, batch), expected, rtol=1e-5)


def test_train_loss_averages_over_real_tokens_only(setup):
    graphdef, state, train_step, eval_step = setup
    batch = _batch(seed=2)
    weights = batch.weights_BT.at[:, 6:].set(0.0)
    padded = Batch(inputs_BT=batch.inputs_BT, targets_BT=batch.targets_BT, weights_BT=weights)
    _, metrics = train_step(jax.tree.map(jnp.copy, state), padded)
    nll, count = eval_step(state.params, padded)
    assert float(count) == 24.0
    np.testing.assert_allclose(metrics["loss"], nll / count, rtol=1e-5)
