"""dot_product_attention against a numpy formula and jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.layers import causal_mask, dot_product_attention


def numpy_attention(q, k, v, mask=None, bias=None, scale=None):
    """Independent reference: loops over heads, repeats kv heads for groups."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    scale = 1 / np.sqrt(H) if scale is None else scale
    out = np.zeros((B, T, N, v.shape[-1]))
    weights = np.zeros((B, N, T, S))
    for b in range(B):
        for n in range(N):
            kv = n // (N // K)
            logits = scale * q[b, :, n] @ k[b, :, kv].T
            if bias is not None:
                logits = logits + np.broadcast_to(bias, (B, N, T, S))[b, n]
            m = np.ones((T, S), bool) if mask is None else np.broadcast_to(mask, (B, N, T, S))[b, n]
            logits = np.where(m, logits, -np.inf)
            mx = np.max(logits, axis=-1, keepdims=True)
            mx = np.where(np.isfinite(mx), mx, 0.0)
            e = np.exp(logits - mx)
            denom = e.sum(-1, keepdims=True)
            w = np.divide(e, denom, out=np.zeros_like(e), where=denom > 0)
            weights[b, n] = w
            out[b, :, n] = w @ v[b, :, kv]
    return out, weights


def _qkv(rng, B=2, T=5, S=7, N=4, K=2, H=8, Hv=8, dtype=np.float32):
    q = rng.normal(size=(B, T, N, H)).astype(dtype)
    k = rng.normal(size=(B, S, K, H)).astype(dtype)
    v = rng.normal(size=(B, S, K, Hv)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_matches_numpy_for_multi_grouped_and_multi_query(num_kv_heads):
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, K=num_kv_heads, Hv=6)
    out, weights = dot_product_attention(q, k, v, return_weights=True)
    ref_out, ref_w = numpy_attention(q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_w, atol=1e-6)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)


def test_mask_bias_and_scale_together():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng)
    mask = rng.random((2, 1, 5, 7)) > 0.3
    bias = rng.normal(size=(1, 4, 5, 7)).astype(np.float32)  # per-head bias
    out = dot_product_attention(q, k, v, mask=mask, bias=bias, scale=0.3)
    ref, _ = numpy_attention(q, k, v, mask=mask, bias=bias, scale=0.3)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_matches_jax_nn_with_causal_mask():
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, T=7, S=7)
    mask = causal_mask(7)
    out = dot_product_attention(q, k, v, mask=mask)
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_fully_masked_row_gives_zero_output_and_finite_zero_grads():
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, T=3, S=4)
    mask = np.ones((1, 1, 3, 4), bool)
    mask[..., 1, :] = False  # query 1 sees nothing

    def loss(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v, mask=mask)[:, 1] ** 2) + jnp.sum(
            dot_product_attention(q, k, v, mask=mask)
        )

    out = dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_array_equal(np.asarray(out)[:, 1], 0.0)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(grads[0])[:, 1], 0.0)


def test_bfloat16_inputs_keep_dtype_and_large_logits_stay_finite():
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng)
    q = (q * 300).astype(jnp.bfloat16)  # logits far beyond the bf16/f16 softmax range
    out, weights = dot_product_attention(q, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                                         return_weights=True)
    assert out.dtype == jnp.bfloat16 and weights.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    ref, _ = numpy_attention(np.asarray(q, np.float32), np.asarray(k.astype(jnp.bfloat16), np.float32),
                             np.asarray(v.astype(jnp.bfloat16), np.float32))
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(query=np.zeros((2, 5, 4)),), "query must have rank 4"),
        (dict(key=np.zeros((3, 7, 2, 8))), "batch sizes differ"),
        (dict(key=np.zeros((2, 7, 3, 8)), value=np.zeros((2, 7, 3, 8))), "multiple of key/value heads"),
        (dict(key=np.zeros((2, 7, 2, 6))), "key head_dim"),
        (dict(value=np.zeros((2, 6, 2, 8))), "value must match key"),
        (dict(mask=np.ones((3, 1, 5, 7), bool)), "mask of shape"),
        (dict(mask=np.ones((5, 7), np.float32)), "mask must be boolean"),
        (dict(bias=np.ones((1, 4, 5, 6))), "bias of shape"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(kwargs, match):
    args = dict(query=np.zeros((2, 5, 4, 8)), key=np.zeros((2, 7, 2, 8)), value=np.zeros((2, 7, 2, 8)))
    args.update(kwargs)
    query, key, value = args.pop("query"), args.pop("key"), args.pop("value")
    with pytest.raises(ValueError, match=match):
        dot_product_attention(query, key, value, **args)
