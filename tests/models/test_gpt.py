"""GPT model: shapes, cache equivalence, causality, config validation, presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxzoo.models import GPT, GPTConfig, init_cache

CONFIG = GPTConfig.tiny()  # V=32, max_seq_len=16, D=16, N=4, L=2


@pytest.fixture(scope="module")
def model():
    return GPT(CONFIG, rngs=nnx.Rngs(0))


def _batch(batch=2, length=10, seed=1):
    tokens = jax.random.randint(jax.random.key(seed), (batch, length), 0, CONFIG.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    return tokens, positions


def test_forward_shapes_dtype_finite(model):
    tokens, positions = _batch()
    logits, cache = model(tokens, positions)
    assert logits.shape == (2, 10, CONFIG.vocab_size) and logits.dtype == jnp.float32
    assert cache is None and np.all(np.isfinite(logits))


@pytest.mark.parametrize("prompt_len", [1, 4, 9])
def test_prefill_then_one_token_at_a_time_equals_full_forward(model, prompt_len):
    tokens, positions = _batch(length=10)
    full, _ = model(tokens, positions)
    cache = init_cache(CONFIG, 2, 12)
    logits, cache = model(tokens[:, :prompt_len], positions[:, :prompt_len], cache=cache)
    pieces = [logits]
    for t in range(prompt_len, 10):
        logits, cache = model(tokens[:, t:t + 1], positions[:, t:t + 1], cache=cache)
        pieces.append(logits)
    assert int(cache.length) == 10
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)


def test_cached_step_under_jit_matches(model):
    graphdef, params = nnx.split(model)

    @jax.jit
    def step(params, tokens, positions, cache):
        return nnx.merge(graphdef, params)(tokens, positions, cache=cache)

    tokens, positions = _batch(length=6)
    full, _ = model(tokens, positions)
    cache = init_cache(CONFIG, 2, 6)
    _, cache = step(params, tokens[:, :5], positions[:, :5], cache)
    last, cache = step(params, tokens[:, 5:], positions[:, 5:], cache)
    np.testing.assert_allclose(last[:, 0], full[:, 5], atol=1e-5)


def test_causality_by_gradient(model):
    # Position t's loss must not depend on anything after t. Each position reads
    # its own row of the position table, so row j's gradient measures the
    # dependence on token j.
    tokens, positions = _batch(batch=1, length=8)
    graphdef, params = nnx.split(model)
    t = 4

    def loss_at_t(params):
        logits, _ = nnx.merge(graphdef, params)(tokens, positions)
        return -jax.nn.log_softmax(logits[0, t])[tokens[0, t + 1]]

    grads = jax.grad(loss_at_t)(params)
    row_norms = np.linalg.norm(np.asarray(grads["position_embed"][...]), axis=-1)
    assert np.all(row_norms[t + 1:] == 0.0)
    assert np.all(row_norms[:t + 1] > 0.0)


def test_causality_by_perturbation(model):
    tokens, positions = _batch(batch=1, length=8)
    changed = tokens.at[:, 5:].set((tokens[:, 5:] + 1) % CONFIG.vocab_size)
    a, _ = model(tokens, positions)
    b, _ = model(changed, positions)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_output_layer_is_tied_to_token_embedding(model):
    _, params = nnx.split(model)
    names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(params)}
    assert "token_embed/embedding" in names
    assert not any("lm_head" in n or "output" in n for n in names)


def test_dropout_only_with_rng(model):
    tokens, positions = _batch()
    model_with_dropout = GPT(GPTConfig.tiny(dropout_rate=0.5), rngs=nnx.Rngs(0))
    a, _ = model_with_dropout(tokens, positions)
    b, _ = model_with_dropout(tokens, positions)
    np.testing.assert_array_equal(a, b)
    c, _ = model_with_dropout(tokens, positions, dropout_rng=jax.random.key(1))
    d, _ = model_with_dropout(tokens, positions, dropout_rng=jax.random.key(2))
    assert not np.allclose(c, a) and not np.allclose(c, d)


def test_positions_past_max_raise(model):
    tokens = jnp.zeros((1, 2), jnp.int32)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 16\)"):
        model(tokens, jnp.array([[15, 16]]))
    with pytest.raises(ValueError, match="positions must lie"):
        model(tokens, jnp.array([[-1, 0]]))
    with pytest.raises(ValueError, match="do not fit"):
        model(jnp.zeros((1, 17), jnp.int32), jnp.arange(17)[None])


def test_positions_past_max_under_jit_give_nan_not_a_wrong_row(model):
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda p, t, pos: nnx.merge(graphdef, p)(t, pos)[0])
    logits = forward(params, jnp.zeros((1, 2), jnp.int32), jnp.array([[15, 16]]))
    assert np.all(np.isfinite(logits[0, 0])) and np.all(np.isnan(logits[0, 1]))


def test_cache_overflow_raises(model):
    cache = init_cache(CONFIG, 1, 4)
    _, cache = model(jnp.zeros((1, 3), jnp.int32), jnp.arange(3)[None], cache=cache)
    with pytest.raises(ValueError, match="cache overflow"):
        model(jnp.zeros((1, 2), jnp.int32), jnp.array([[3, 4]]), cache=cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        init_cache(CONFIG, 1, 17)


def test_bad_token_and_position_shapes(model):
    with pytest.raises(ValueError, match="tokens must have shape"):
        model(jnp.zeros((3,), jnp.int32), jnp.arange(3))
    with pytest.raises(ValueError, match="positions must have the shape"):
        model(jnp.zeros((1, 3), jnp.int32), jnp.arange(3))
    with pytest.raises(ValueError, match="tokens must be integers"):
        model(jnp.zeros((1, 3)), jnp.arange(3)[None])


@pytest.mark.parametrize("field, value", [("num_heads", 3), ("vocab_size", 0),
                                          ("dropout_rate", 1.0), ("num_layers", 2.5),
                                          ("layer_norm_epsilon", 0.0)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GPTConfig.tiny(**{field: value})


def test_config_round_trip_and_presets():
    config = GPTConfig.preset("demo", vocab_size=67)
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({**config.to_dict(), "colour": 1})


def test_gpt2_small_shape_by_eval_shape():
    config = GPTConfig.gpt2_small()
    abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    _, params = nnx.split(abstract, nnx.Param)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert count == 124_439_808  # GPT-2 small with tied output and 1024 positions
    cache = jax.eval_shape(lambda: init_cache(config, 1, 1024))
    assert cache.layers[0].key_BSKH.shape == (1, 1024, 12, 64)


# ---------------------------------------------------------------- position schemes and heads

VARIANTS = {
    "learned": GPTConfig.tiny(),
    "sinusoidal": GPTConfig.tiny(position="sinusoidal"),
    "rotary_gqa": GPTConfig.tiny(position="rotary", num_kv_heads=2),
    "rotary_interleaved_mqa": GPTConfig.tiny(position="rotary", rope_layout="interleaved",
                                             num_kv_heads=1),
    "alibi_head_dim_6": GPTConfig.tiny(position="alibi", head_dim=6),
    "relative_t5_bias": GPTConfig.tiny(position="relative", relative_num_buckets=8,
                                       relative_max_distance=10),
    "none_rms_swiglu": GPTConfig.tiny(position="none", norm="rms_norm", activation="silu",
                                      gated_mlp=True, use_bias=False),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    config = VARIANTS[request.param]
    return request.param, config, GPT(config, rngs=nnx.Rngs(0))


def test_every_variant_caches_exactly(variant):
    name, config, model = variant
    tokens, positions = _batch(length=9, seed=3)
    full, _ = model(tokens, positions)
    cache = init_cache(config, 2, 12)
    logits, cache = model(tokens[:, :4], positions[:, :4], cache=cache)
    pieces = [logits]
    for t in range(4, 9):
        logits, cache = model(tokens[:, t:t + 1], positions[:, t:t + 1], cache=cache)
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, err_msg=name)
    assert cache.layers[0].key_BSKH.shape == (2, 12, config.kv_heads, config.head_size)
    np.testing.assert_array_equal(cache.positions_BS[:, :9], positions)


def test_every_variant_is_causal(variant):
    name, config, model = variant
    tokens, positions = _batch(batch=1, length=8)
    changed = tokens.at[:, 5:].set((tokens[:, 5:] + 1) % config.vocab_size)
    a, _ = model(tokens, positions)
    b, _ = model(changed, positions)
    np.testing.assert_array_equal(a[:, :5], b[:, :5], err_msg=name)
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_relative_schemes_ignore_a_shift_of_all_positions(variant):
    # Rotary and ALiBi see only k - q; absolute schemes see the positions themselves.
    name, config, model = variant
    tokens, positions = _batch(length=8)
    a, _ = model(tokens, positions)
    b, _ = model(tokens, positions + 5)
    if config.position in ("rotary", "alibi", "relative", "none"):
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=name)
    else:
        assert not np.allclose(a, b, atol=1e-4), name


def test_every_layer_returns_per_head_weights(variant):
    name, config, model = variant
    tokens, positions = _batch(length=6)
    logits, _, weights = model(tokens, positions, return_weights=True)
    assert weights.shape == (config.num_layers, 2, config.num_heads, 6, 6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.triu(np.asarray(weights), 1), 0.0)
    np.testing.assert_array_equal(logits, model(tokens, positions)[0])


@pytest.mark.parametrize("overrides, field", [
    (dict(position="absolute"), "position"),
    (dict(position="rotary", rope_layout="zigzag"), "rope_layout"),
    (dict(position="relative", relative_num_buckets=1), "relative_num_buckets"),
    (dict(position="relative", relative_max_distance=4, relative_num_buckets=16),
     "relative_max_distance"),
    (dict(num_kv_heads=3), "num_kv_heads"),
    (dict(norm="batch_norm"), "norm"),
    (dict(activation="relu", gated_mlp=True), "activation"),
    (dict(position="sinusoidal", embed_dim=15, head_dim=4, num_heads=3), "embed_dim"),
])
def test_position_and_head_options_are_validated(overrides, field):
    with pytest.raises(ValueError, match=f"GPTConfig.{field}"):
        GPTConfig.tiny(**overrides)


def test_left_padded_rows_equal_each_prompt_alone_with_and_without_cache(variant):
    # Row 1 is row 0's last 5 tokens behind 3 pads; its real tokens get positions 0..4.
    name, config, model = variant
    tokens, _ = _batch(batch=1, length=8, seed=4)
    prompt = tokens[0, 3:]
    batch = jnp.stack([tokens[0], jnp.concatenate([jnp.zeros(3, jnp.int32), prompt])])
    valid = jnp.array([[True] * 8, [False] * 3 + [True] * 5])
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    padded, _ = model(batch, positions, valid_BT=valid)
    alone, _ = model(prompt[None], jnp.arange(5)[None])
    np.testing.assert_allclose(padded[1, 3:], alone[0], atol=1e-5, err_msg=name)
    # The same through the cache: prefill 6 slots, then two single tokens.
    cache = init_cache(config, 2, 8)
    first, cache = model(batch[:, :6], positions[:, :6], valid_BT=valid[:, :6], cache=cache)
    steps = [first]
    for t in (6, 7):
        logits, cache = model(batch[:, t:t + 1], positions[:, t:t + 1], cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1)[1, 3:], alone[0], atol=1e-5,
                               err_msg=name)
    np.testing.assert_array_equal(cache.valid_BS, valid)
