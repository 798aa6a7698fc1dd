"""dot_product_attention against a numpy formula and jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.layers import causal_mask, dot_product_attention
from flaxzoo.layers.attention import IMPLEMENTATIONS


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


@pytest.mark.parametrize("head_dim", [4, 16, 64])
def test_default_scale_is_one_over_sqrt_head_dim(head_dim):
    rng = np.random.default_rng(11)
    q, k, v = _qkv(rng, H=head_dim, Hv=3)
    _, weights = dot_product_attention(q, k, v, return_weights=True)
    # softmax(q.k / sqrt(H)) computed here from scratch, heads of group 2 reading kv head 1
    logits = np.einsum("tnh,snh->nts", q[0], np.repeat(k[0], 2, axis=1)) / np.sqrt(head_dim)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(weights[0], expected, atol=1e-5)
    unscaled = dot_product_attention(q, k, v, scale=1.0)
    assert not np.allclose(unscaled, dot_product_attention(q, k, v), atol=1e-3)


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


# --- parity with jax.nn.dot_product_attention over mask / bias / head layouts ----------

_MASK_SHAPES = {"none": None, "BNTS": (2, 4, 5, 7), "B1TS": (2, 1, 5, 7), "TS": (5, 7),
                "B11S": (2, 1, 1, 7)}
_BIAS_SHAPES = {"none": None, "1NTS": (1, 4, 5, 7), "BNTS": (2, 4, 5, 7), "S": (7,)}


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_name", list(_MASK_SHAPES))
@pytest.mark.parametrize("bias_name", list(_BIAS_SHAPES))
def test_matches_jax_nn_for_every_mask_bias_and_head_layout(num_kv_heads, mask_name, bias_name):
    rng = np.random.default_rng(10)
    q, k, v = _qkv(rng, K=num_kv_heads)
    mask_shape, bias_shape = _MASK_SHAPES[mask_name], _BIAS_SHAPES[bias_name]
    mask = None if mask_shape is None else rng.random(mask_shape) > 0.3
    if mask is not None:
        mask[..., 0] = True  # jax.nn gives fully masked rows a uniform average, not zeros
    bias = None if bias_shape is None else rng.normal(size=bias_shape).astype(np.float32)
    full = lambda a: None if a is None else np.broadcast_to(a, (2, 4, 5, 7))
    ref = jax.nn.dot_product_attention(q, k, v, mask=full(mask), bias=full(bias))
    for implementation in (None, "xla", "jax_nn"):
        out = dot_product_attention(q, k, v, mask=mask, bias=bias, implementation=implementation)
        np.testing.assert_allclose(out, ref, atol=2e-5, err_msg=str(implementation))


@pytest.mark.parametrize("q_len, kv_len", [(6, 6), (2, 6), (1, 6)])
def test_is_causal_equals_causal_mask_aligned_to_the_end(q_len, kv_len):
    rng = np.random.default_rng(11)
    q, k, v = _qkv(rng, T=q_len, S=kv_len)
    padding = np.ones((2, 1, 1, kv_len), bool)
    padding[1, ..., :2] = False
    out = dot_product_attention(q, k, v, mask=padding, is_causal=True)
    ref, _ = numpy_attention(q, k, v, mask=padding & np.asarray(causal_mask(q_len, kv_len)))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    for implementation in ("xla", "jax_nn"):
        out_impl = dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
        np.testing.assert_allclose(out_impl, numpy_attention(
            q, k, v, mask=np.asarray(causal_mask(q_len, kv_len)))[0], atol=1e-5)


def test_value_head_dim_may_differ_from_key_head_dim():
    rng = np.random.default_rng(12)
    q, k, v = _qkv(rng, H=8, Hv=3)
    out = dot_product_attention(q, k, v, is_causal=False)
    assert out.shape == (2, 5, 4, 3)
    np.testing.assert_allclose(out, numpy_attention(q, k, v)[0], atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("implementation", ["xla", "jax_nn"])
def test_half_precision_large_logits_close_to_float32(dtype, implementation):
    rng = np.random.default_rng(13)
    q, k, v = _qkv(rng)
    q = q * 40.0  # logits of several hundred: exp overflows float16 without f32 statistics
    q16, k16, v16 = (jnp.asarray(a, dtype) for a in (q, k, v))
    out = dot_product_attention(q16, k16, v16, mask=causal_mask(5, 7),
                                implementation=implementation)
    assert out.dtype == dtype
    ref, _ = numpy_attention(*(np.asarray(a, np.float32) for a in (q16, k16, v16)),
                             mask=np.asarray(causal_mask(5, 7)))
    out32 = np.asarray(out, np.float32)
    assert np.all(np.isfinite(out32))
    np.testing.assert_allclose(out32, ref, atol=0.05 if dtype == jnp.float16 else 0.15)


# --- dropout -----------------------------------------------------------------------------


def test_dropout_rate_zero_is_exactly_the_deterministic_path():
    rng = np.random.default_rng(14)
    q, k, v = _qkv(rng)
    plain = dot_product_attention(q, k, v)
    with_key = dot_product_attention(q, k, v, dropout_rate=0.0, dropout_rng=jax.random.key(0))
    np.testing.assert_array_equal(plain, with_key)


def test_dropout_drops_weights_rescales_the_rest_and_keeps_the_mean():
    rng = np.random.default_rng(15)
    q, k, v = _qkv(rng, B=1, T=4, S=6, N=2, K=2)
    rate = 0.25
    _, clean_w = dot_product_attention(q, k, v, return_weights=True)
    out, dropped_w = dot_product_attention(q, k, v, dropout_rate=rate,
                                           dropout_rng=jax.random.key(1), return_weights=True)
    clean_w, dropped_w = np.asarray(clean_w), np.asarray(dropped_w)
    kept = dropped_w != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(dropped_w[kept], clean_w[kept] / (1 - rate), rtol=1e-6)
    # The output mixes the values with exactly the returned (dropped) weights.
    mixed = np.einsum("bnts,bsnh->btnh", dropped_w, np.asarray(v, np.float64))
    np.testing.assert_allclose(out, mixed, atol=1e-5)
    # Averaged over many keys the output is the deterministic one.
    keys = jax.random.split(jax.random.key(2), 4000)
    mean_out = jax.vmap(lambda key: dot_product_attention(
        q, k, v, dropout_rate=rate, dropout_rng=key))(keys).mean(0)
    np.testing.assert_allclose(mean_out, dot_product_attention(q, k, v), atol=0.03)


def test_dropout_is_reproducible_per_key():
    rng = np.random.default_rng(16)
    q, k, v = _qkv(rng)
    a = dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(3))
    b = dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(3))
    c = dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dropout_rate=0.1), "needs a dropout_rng"),
        (dict(dropout_rate=1.0, dropout_rng=jax.random.key(0)), "dropout_rate must be in"),
        (dict(dropout_rate=-0.1), "dropout_rate must be in"),
        (dict(implementation="flash"), "implementation must be"),
        (dict(implementation="jax_nn", return_weights=True), "return_weights"),
        (dict(implementation="jax_nn", dropout_rate=0.1, dropout_rng=jax.random.key(0)),
         "dropout"),
        (dict(is_causal=True, key=np.zeros((2, 3, 2, 8)), value=np.zeros((2, 3, 2, 8))),
         "is_causal needs kv_len >= q_len"),
        (dict(bias=np.ones((5, 7), np.int32)), "bias must be a float"),
    ],
)
def test_bad_options_raise_value_error_naming_argument(kwargs, match):
    args = dict(query=np.zeros((2, 5, 4, 8), np.float32), key=np.zeros((2, 7, 2, 8), np.float32),
                value=np.zeros((2, 7, 2, 8), np.float32))
    args.update(kwargs)
    query, key, value = args.pop("query"), args.pop("key"), args.pop("value")
    with pytest.raises(ValueError, match=match):
        dot_product_attention(query, key, value, **args)


def test_jax_nn_backend_refuses_a_different_value_head_dim():
    rng = np.random.default_rng(17)
    q, k, v = _qkv(rng, Hv=6)
    with pytest.raises(ValueError, match="value head_dim"):
        dot_product_attention(q, k, v, implementation="jax_nn")


def test_fully_masked_rows_are_zero_for_every_implementation():
    rng = np.random.default_rng(18)
    q, k, v = _qkv(rng)
    mask = np.ones((2, 1, 5, 7), bool)
    mask[0, :, 2] = False
    for implementation in IMPLEMENTATIONS:
        def loss(q, k, v):
            return jnp.sum(dot_product_attention(q, k, v, mask=mask,
                                                 implementation=implementation) ** 2)
        out = dot_product_attention(q, k, v, mask=mask, implementation=implementation)
        np.testing.assert_array_equal(np.asarray(out)[0, 2], 0.0)
        grad_q = jax.grad(loss)(q, k, v)
        assert np.all(np.isfinite(grad_q))
        np.testing.assert_array_equal(np.asarray(grad_q)[0, 2], 0.0)
