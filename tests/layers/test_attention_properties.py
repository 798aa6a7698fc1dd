"""Properties of dot_product_attention that any wrong answer breaks (hypothesis)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flaxzoo.layers import dot_product_attention

# Few distinct shapes, so examples reuse compiled functions.
_LAYOUTS = st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 2)])  # (N, K)
_SETTINGS = settings(max_examples=25, deadline=None)


def _inputs(seed, num_heads, num_kv_heads, B=2, T=3, S=5, H=4, Hv=3):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, num_heads, H)).astype(np.float32)
    k = rng.normal(size=(B, S, num_kv_heads, H)).astype(np.float32)
    v = rng.normal(size=(B, S, num_kv_heads, Hv)).astype(np.float32)
    key_valid = rng.random((B, S)) > 0.4
    key_valid[:, rng.integers(S)] = True  # every row sees at least one key
    return rng, q, k, v, key_valid[:, None, None, :]


@_SETTINGS
@given(seed=st.integers(0, 2**31), layout=_LAYOUTS)
def test_masked_keys_never_change_the_output(seed, layout):
    rng, q, k, v, mask = _inputs(seed, *layout)
    hidden = ~mask[:, 0, 0, :]  # [B, S]
    k2, v2 = k.copy(), v.copy()
    k2[hidden] = rng.normal(size=k2[hidden].shape) * 100
    v2[hidden] = rng.normal(size=v2[hidden].shape) * 100
    np.testing.assert_allclose(dot_product_attention(q, k2, v2, mask=mask),
                               dot_product_attention(q, k, v, mask=mask), atol=1e-5)


@_SETTINGS
@given(seed=st.integers(0, 2**31), layout=_LAYOUTS)
def test_gradients_wrt_masked_keys_and_values_are_zero(seed, layout):
    _, q, k, v, mask = _inputs(seed, *layout)
    loss = lambda k, v: jnp.sum(jnp.sin(dot_product_attention(q, k, v, mask=mask)))
    grad_k, grad_v = jax.grad(loss, argnums=(0, 1))(k, v)
    hidden = ~mask[:, 0, 0, :]
    np.testing.assert_array_equal(np.asarray(grad_k)[hidden], 0.0)
    np.testing.assert_array_equal(np.asarray(grad_v)[hidden], 0.0)
    assert np.abs(np.asarray(grad_k)[~hidden]).sum() > 0


@_SETTINGS
@given(seed=st.integers(0, 2**31), layout=_LAYOUTS)
def test_permuting_keys_with_their_values_mask_and_bias_changes_nothing(seed, layout):
    rng, q, k, v, mask = _inputs(seed, *layout)
    bias = rng.normal(size=(1, layout[0], 3, 5)).astype(np.float32)
    perm = rng.permutation(5)
    out = dot_product_attention(q, k, v, mask=mask, bias=bias)
    out_perm = dot_product_attention(q, k[:, perm], v[:, perm], mask=mask[..., perm],
                                     bias=bias[..., perm])
    np.testing.assert_allclose(out_perm, out, atol=1e-5)


@_SETTINGS
@given(seed=st.integers(0, 2**31), layout=_LAYOUTS)
def test_rows_sum_to_one_or_zero_when_fully_masked(seed, layout):
    rng, q, k, v, _ = _inputs(seed, *layout)
    mask = rng.random((2, layout[0], 3, 5)) > 0.5  # some rows end up fully masked
    _, weights = dot_product_attention(q, k, v, mask=mask, return_weights=True)
    sums = np.asarray(weights).sum(-1)
    np.testing.assert_allclose(sums, np.where(mask.any(-1), 1.0, 0.0), atol=1e-6)
    assert np.all(np.asarray(weights)[~mask] == 0)


@_SETTINGS
@given(seed=st.integers(0, 2**31), layout=_LAYOUTS)
def test_grouped_heads_equal_explicitly_repeated_key_value_heads(seed, layout):
    num_heads, num_kv_heads = layout
    _, q, k, v, mask = _inputs(seed, num_heads, num_kv_heads)
    groups = num_heads // num_kv_heads
    k_rep, v_rep = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    np.testing.assert_allclose(dot_product_attention(q, k, v, mask=mask, is_causal=False),
                               dot_product_attention(q, k_rep, v_rep, mask=mask), atol=1e-6)
