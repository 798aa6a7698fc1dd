"""T5 model: encode/decode, cached decoding, causality, cross-attention cache, the
original Transformer as a config, config validation, published shapes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxzoo.models import T5, T5Config

CONFIGS = {
    "t5_v1_0": T5Config.tiny(),
    "t5_v1_1": T5Config.tiny(activation="gelu_tanh", gated_mlp=True, tie_word_embeddings=False,
                             num_decoder_layers=3),
    "attention_is_all_you_need": T5Config.attention_is_all_you_need(
        vocab_size=32, max_seq_len=16, num_layers=2, num_heads=4, embed_dim=16, mlp_dim=32,
        dropout_rate=0.0),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def variant(request):
    config = CONFIGS[request.param]
    return request.param, config, T5(config, rngs=nnx.Rngs(0))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    inputs = jnp.asarray(rng.integers(1, 32, size=(2, 9)))
    inputs_valid = jnp.asarray(np.arange(9)[None] < np.array([[9], [6]]))
    decoder_inputs = jnp.asarray(np.concatenate([np.zeros((2, 1), int),
                                                 rng.integers(1, 32, size=(2, 6))], axis=1))
    return inputs, inputs_valid, decoder_inputs


def test_cached_decoding_equals_the_full_decoder_pass(variant):
    name, config, model = variant
    inputs, inputs_valid, decoder_inputs = _batch()
    full = model(inputs, decoder_inputs, inputs_valid_BS=inputs_valid)
    assert full.shape == (2, 7, 32) and np.all(np.isfinite(full))
    encoded = model.encode(inputs, valid_BS=inputs_valid)
    cache = model.init_decode_cache(encoded, max_len=8)
    prefix, cache = model.decode(decoder_inputs[:, :3], jnp.broadcast_to(jnp.arange(3), (2, 3)),
                                 cache=cache)
    steps = [prefix]
    for t in range(3, 7):
        logits, cache = model.decode(decoder_inputs[:, t:t + 1], jnp.full((2, 1), t), cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, err_msg=name)
    assert int(cache.self_cache.length) == 7


def test_decoder_is_causal_and_encoder_sees_all_real_inputs(variant):
    name, config, model = variant
    inputs, inputs_valid, decoder_inputs = _batch(1)
    base = model(inputs, decoder_inputs, inputs_valid_BS=inputs_valid)
    later = decoder_inputs.at[:, 4:].set((decoder_inputs[:, 4:] + 1) % 32)
    changed = model(inputs, later, inputs_valid_BS=inputs_valid)
    np.testing.assert_array_equal(base[:, :4], changed[:, :4], err_msg=name)
    assert not np.allclose(base[:, 4:], changed[:, 4:])
    # Changing the last real input token changes every decoder position.
    last_input = inputs.at[0, 8].set((inputs[0, 8] + 1) % 32)
    moved = model(last_input, decoder_inputs, inputs_valid_BS=inputs_valid)
    assert np.all(np.abs(np.asarray(moved[0] - base[0])).max(-1) > 0)
    # Padded inputs (row 1 from position 6) change nothing.
    padded = inputs.at[1, 6:].set(0)
    np.testing.assert_allclose(model(padded, decoder_inputs, inputs_valid_BS=inputs_valid)[1],
                               base[1], atol=1e-6)


def test_cross_attention_reads_keys_and_values_from_the_cache(variant):
    name, config, model = variant
    inputs, inputs_valid, decoder_inputs = _batch(2)
    encoded = model.encode(inputs, valid_BS=inputs_valid)
    cache = model.init_decode_cache(encoded, max_len=4)
    assert len(cache.cross_kv) == config.decoder_layers
    assert cache.cross_kv[0].key_BSKH.shape[:2] == (2, 9)
    start = jnp.zeros((2, 1), jnp.int32)
    logits, _ = model.decode(start, start, cache=cache)
    emptied = cache.replace(cross_kv=jax.tree.map(jnp.zeros_like, cache.cross_kv))
    other, _ = model.decode(start, start, cache=emptied)
    assert not np.allclose(logits, other), name
    with pytest.raises(ValueError, match="exactly one of encoder_output"):
        model.decode(start, start, cache=cache, encoder_output=encoded)


def test_decode_step_jits_once_and_returns_weights(variant):
    name, config, model = variant
    inputs, inputs_valid, decoder_inputs = _batch(3)
    graphdef, params = nnx.split(model)
    traces = []

    @jax.jit
    def step(params, tokens, positions, cache):
        traces.append(1)
        return nnx.merge(graphdef, params).decode(tokens, positions, cache=cache)

    cache = model.init_decode_cache(model.encode(inputs, valid_BS=inputs_valid), max_len=4)
    for t in range(3):
        _, cache = step(params, decoder_inputs[:, t:t + 1], jnp.full((2, 1), t), cache)
    assert len(traces) == 1
    _, _, (self_w, cross_w) = model.decode(
        decoder_inputs, jnp.broadcast_to(jnp.arange(7), (2, 7)),
        encoder_output=model.encode(inputs, valid_BS=inputs_valid), return_weights=True)
    assert self_w.shape == (config.decoder_layers, 2, 4, 7, 7)
    assert cross_w.shape == (config.decoder_layers, 2, 4, 7, 9)
    np.testing.assert_array_equal(np.asarray(cross_w)[:, 1, :, :, 6:], 0.0)  # padded inputs


def test_dropout_only_with_a_key():
    model = T5(T5Config.tiny(dropout_rate=0.3), rngs=nnx.Rngs(0))
    inputs, inputs_valid, decoder_inputs = _batch()
    a = model(inputs, decoder_inputs)
    np.testing.assert_array_equal(a, model(inputs, decoder_inputs))
    assert not np.allclose(a, model(inputs, decoder_inputs, dropout_rng=jax.random.key(0)))


def test_bad_input_errors_name_the_argument():
    model = T5(T5Config.tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="inputs must be integers"):
        model.encode(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="do not fit"):
        model.encode(jnp.zeros((1, 17), jnp.int32))
    encoded = model.encode(jnp.zeros((1, 3), jnp.int32))
    cache = model.init_decode_cache(encoded, max_len=2)
    start = jnp.zeros((1, 1), jnp.int32)
    _, cache = model.decode(jnp.zeros((1, 2), jnp.int32), jnp.arange(2)[None], cache=cache)
    with pytest.raises(ValueError, match="cache overflow"):
        model.decode(start, start, cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        model.init_decode_cache(encoded, max_len=17)


@pytest.mark.parametrize("field, value", [("position", "rotary"), ("num_heads", 3),
                                          ("decoder_start_id", 32), ("activation", "tanh"),
                                          ("num_decoder_layers", 0), ("initialisation", "xavier")])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"T5Config\..*\b{field}\b"):
        T5Config.tiny(**{field: value})


def test_the_original_transformer_is_a_config_of_the_same_code():
    config = T5Config.attention_is_all_you_need()
    assert (config.pre_norm, config.norm, config.position, config.activation) == (
        False, "layer_norm", "sinusoidal", "relu")
    model = T5(dataclasses.replace(CONFIGS["attention_is_all_you_need"]), rngs=nnx.Rngs(0))
    assert model.encoder.relative_bias is None and model.encoder.final_norm is None
    assert model.encoder.blocks[0].attn.query.bias is not None


@pytest.mark.parametrize("preset, count", [("t5_small", 60_506_624),
                                           ("t5_v1_1_small", 76_961_152),
                                           ("attention_is_all_you_need", 63_082_496)])
def test_published_shapes_by_eval_shape(preset, count):
    abstract = nnx.eval_shape(lambda: T5(T5Config.preset(preset), rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == count


def test_decoder_causality_by_gradient():
    # Decoder tokens after t use ids found nowhere else, so the gradient of the loss at
    # t with respect to those embedding rows measures dependence on the future alone
    # (untied, so the output layer adds no gradient to the embedding).
    model = T5(T5Config.tiny(tie_word_embeddings=False), rngs=nnx.Rngs(0))
    inputs = jnp.array([[2, 3, 4, 5]])
    decoder_inputs = jnp.array([[0, 6, 7, 8, 20, 21, 22]])
    t = 3
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_at_t(params):
        logits = nnx.merge(graphdef, params)(inputs, decoder_inputs)
        return -jax.nn.log_softmax(logits[0, t])[9]

    grads = jax.grad(loss_at_t)(params)
    rows = np.linalg.norm(np.asarray(grads["token_embed"]["embedding"][...]), axis=-1)
    assert np.all(rows[[20, 21, 22]] == 0.0)
    assert np.all(rows[[2, 3, 4, 5, 6, 7, 8]] > 0.0)


def test_t5_initialisation_follows_the_published_scheme():
    config = T5Config.tiny(embed_dim=64, num_heads=4, mlp_dim=128, tie_word_embeddings=False)
    model = T5(config, rngs=nnx.Rngs(0))
    D, H, F = 64, 16, 128
    block = model.decoder.blocks[0]
    for param, std in ((block.attn.query.kernel, (D * H) ** -0.5),
                       (block.cross_attn.key.kernel, D ** -0.5),
                       (block.attn.out.kernel, (4 * H) ** -0.5),
                       (block.mlp.proj.kernel, F ** -0.5), (model.lm_head.kernel, 1.0),
                       (model.token_embed.embedding, 1.0),
                       (model.encoder.relative_bias, D ** -0.5)):
        assert np.std(np.asarray(param[...])) == pytest.approx(std, rel=0.2)
    normal = T5(dataclasses.replace(config, initialisation="normal"), rngs=nnx.Rngs(0))
    assert np.std(np.asarray(normal.decoder.blocks[0].attn.query.kernel[...])) == pytest.approx(
        0.02, rel=0.2)
