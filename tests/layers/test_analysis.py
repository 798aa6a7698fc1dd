"""Attention entropy and rollout against numpy formulas and loops, and their invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flaxzoo.layers.analysis import attention_entropy, attention_rollout


def random_weights(rng, shape, mask=None):
    """Softmax rows of random logits, optionally zero (renormalised) where mask is False."""
    logits = rng.normal(scale=2.0, size=shape)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    if mask is not None:
        p = np.where(mask, p, 0.0)
    total = p.sum(-1, keepdims=True)
    return p / np.where(total > 0, total, 1.0)


# --- attention_entropy -----------------------------------------------------------------


def numpy_entropy(p, mask=None):
    p = np.asarray(p, np.float64)
    keep = p > 0 if mask is None else (p > 0) & mask
    safe = np.where(keep, p, 1.0)
    return -(np.where(keep, p * np.log(safe), 0.0)).sum(-1)


def test_entropy_uniform_and_one_hot_rows():
    # Row t of head 0 is uniform over the first t + 1 keys: entropy log(t + 1).
    uniform = np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None]
    one_hot = np.eye(5)[[2, 0, 4, 4, 1]]
    weights = np.stack([uniform, one_hot])[None].astype(np.float32)  # [1, 2, 5, 5]
    out = attention_entropy(weights)
    assert out.shape == (1, 2, 5) and out.dtype == jnp.float32
    np.testing.assert_allclose(out[0, 0], np.log(np.arange(1, 6)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[0, 1], np.zeros(5))


def test_entropy_matches_numpy_formula_with_mask():
    rng = np.random.default_rng(0)
    mask = rng.random((2, 1, 4, 6)) < 0.7
    mask[0, 0, 1] = False  # one fully masked row
    weights = random_weights(rng, (2, 3, 4, 6), mask).astype(np.float32)
    out = np.asarray(attention_entropy(weights))
    np.testing.assert_allclose(out, numpy_entropy(weights), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[0, :, 1], 0.0)
    # The mask drops keys from the sum even where the weights there are not zero.
    dense = random_weights(rng, (2, 3, 4, 6)).astype(np.float32)
    masked = np.asarray(attention_entropy(dense, mask=jnp.asarray(mask)))
    np.testing.assert_allclose(masked, numpy_entropy(dense, np.broadcast_to(mask, dense.shape)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(masked[0, :, 1], 0.0)


def test_entropy_half_precision_and_finite_gradient():
    uniform = jnp.full((1, 1, 2, 4), 0.25, jnp.bfloat16)  # 0.25 is exact in bfloat16
    out = attention_entropy(uniform)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.full((1, 1, 2), np.log(4.0)), rtol=1e-6)
    weights = np.eye(4, dtype=np.float32)[None, None]  # zeros everywhere off the diagonal
    grad = jax.grad(lambda w: attention_entropy(w).sum())(jnp.asarray(weights))
    assert np.isfinite(np.asarray(grad)).all()
    # d/dp (-p log p) = -(log p + 1) = -1 at p = 1, and 0 on the dropped zero entries.
    np.testing.assert_allclose(grad[0, 0], -np.eye(4), atol=1e-6)


def test_entropy_errors():
    with pytest.raises(ValueError, match=r"weights_BNTS.*\(4, 4\)"):
        attention_entropy(np.ones((4, 4), np.float32))
    weights = np.ones((2, 3, 4, 5), np.float32) / 5
    with pytest.raises(ValueError, match="mask"):
        attention_entropy(weights, mask=np.ones((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"mask.*\(2, 3, 4, 4\)"):
        attention_entropy(weights, mask=np.ones((2, 3, 4, 4), bool))


# --- attention_rollout -----------------------------------------------------------------


def numpy_rollout(layers, residual=True, head_reduction="mean"):
    """Explicit loop: reduce heads, add identity, renormalise rows, left-multiply."""
    reduce = {"mean": np.mean, "max": np.max, "min": np.min}[head_reduction]
    batch, _, size, _ = layers[0].shape
    out = np.empty((batch, size, size))
    for b in range(batch):
        rollout = np.eye(size)
        for w in layers:  # first layer first
            a = reduce(np.asarray(w[b], np.float64), axis=0)
            if residual:
                a = 0.5 * a + 0.5 * np.eye(size)
            a = a / a.sum(-1, keepdims=True)
            rollout = a @ rollout
        out[b] = rollout
    return out


@pytest.mark.parametrize("head_reduction", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [True, False])
def test_rollout_matches_numpy_loop(head_reduction, residual):
    rng = np.random.default_rng(1)
    layers = [random_weights(rng, (2, 3, 5, 5)).astype(np.float32) for _ in range(3)]
    expected = numpy_rollout(layers, residual, head_reduction)
    from_list = attention_rollout(layers, residual=residual, head_reduction=head_reduction)
    stacked = attention_rollout(np.stack(layers), residual=residual,
                                head_reduction=head_reduction)
    assert from_list.shape == (2, 5, 5) and from_list.dtype == jnp.float32
    np.testing.assert_allclose(from_list, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stacked, expected, rtol=1e-5, atol=1e-6)


def test_rollout_multiplies_later_layers_on_the_left():
    # Layer 1: every token reads token 0. Layer 2: every token reads position 1,
    # which after layer 1 holds token 0. So every output traces back to token 0.
    reads_0 = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)[None, None]
    reads_1 = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)[None, None]
    out = attention_rollout([reads_0, reads_1], residual=False)
    np.testing.assert_allclose(out[0], reads_0[0, 0], atol=1e-7)
    reverse = attention_rollout([reads_1, reads_0], residual=False)
    np.testing.assert_allclose(reverse[0], reads_1[0, 0], atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), num_layers=st.integers(1, 3), batch=st.integers(1, 2),
       heads=st.integers(1, 3), size=st.integers(1, 4),
       head_reduction=st.sampled_from(["mean", "max", "min"]), residual=st.booleans())
def test_rollout_rows_sum_to_one(seed, num_layers, batch, heads, size, head_reduction,
                                 residual):
    rng = np.random.default_rng(seed)
    weights = random_weights(rng, (num_layers, batch, heads, size, size)).astype(np.float32)
    out = np.asarray(attention_rollout(weights, residual=residual,
                                       head_reduction=head_reduction))
    assert (out >= 0).all()
    np.testing.assert_allclose(out.sum(-1), np.ones((batch, size)), rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 2), heads=st.integers(1, 4),
       size=st.integers(1, 5))
def test_one_layer_without_residual_is_the_head_average(seed, batch, heads, size):
    rng = np.random.default_rng(seed)
    weights = random_weights(rng, (batch, heads, size, size)).astype(np.float32)
    out = attention_rollout([weights], residual=False)
    np.testing.assert_allclose(out, weights.astype(np.float64).mean(axis=1), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("residual", [True, False])
def test_identity_attention_rolls_out_to_identity(residual):
    eye = np.broadcast_to(np.eye(4, dtype=np.float32), (3, 2, 2, 4, 4))  # [L, B, N, T, T]
    out = attention_rollout(eye, residual=residual)
    np.testing.assert_array_equal(out, np.broadcast_to(np.eye(4), (2, 4, 4)))


def test_rollout_errors():
    w = np.ones((1, 2, 3, 3), np.float32) / 3
    with pytest.raises(ValueError, match="head_reduction.*'mean'.*'median'"):
        attention_rollout([w], head_reduction="median")
    with pytest.raises(ValueError, match="weights_per_layer"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"weights_per_layer.*q_len == kv_len.*\(1, 2, 3, 4\)"):
        attention_rollout([np.ones((1, 2, 3, 4), np.float32) / 4])
    with pytest.raises(ValueError, match=r"weights_per_layer\[1\].*\(1, 2, 4, 4\)"):
        attention_rollout([w, np.ones((1, 2, 4, 4), np.float32) / 4])
    with pytest.raises(ValueError, match=r"weights_per_layer\[0\].*\(2, 3, 3\)"):
        attention_rollout([w[0]])
    with pytest.raises(ValueError, match=r"weights_per_layer.*\(1, 2, 3, 3\)"):
        attention_rollout(w)  # one layer not in a list is ambiguous: rejected
    with pytest.raises(ValueError, match="weights_per_layer"):
        attention_rollout(np.ones((0, 1, 2, 3, 3), np.float32))
