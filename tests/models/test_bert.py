"""BERT model: shapes, bidirectionality, padding, heads, config validation, presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxzoo.models import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
)

CONFIG = BertConfig.tiny(dropout_rate=0.0, attention_dropout_rate=0.0)  # V=32, D=16, N=4, L=2


@pytest.fixture(scope="module")
def model():
    return BertModel(CONFIG, rngs=nnx.Rngs(0))


def _tokens(batch=2, length=8, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, CONFIG.vocab_size)


def test_shapes_dtype_finite_under_jit(model):
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t, return_weights=True))
    out = forward(params, _tokens())
    assert out.hidden_BTD.shape == (2, 8, 16) and out.pooled_BD.shape == (2, 16)
    assert out.weights_LBNTS.shape == (2, 2, 4, 8, 8)
    assert np.all(np.isfinite(out.hidden_BTD)) and out.hidden_BTD.dtype == jnp.float32
    assert np.all(np.abs(out.pooled_BD) <= 1.0)  # tanh pooler


def test_every_token_sees_every_other_token(model):
    # Bidirectional: position 0's output has a nonzero gradient from the last token's
    # embedding and vice versa (a causal model would give zero for the first).
    tokens = _tokens(batch=1)
    graphdef, params = nnx.split(model)

    def output_at(params, t):
        return jnp.sum(nnx.merge(graphdef, params)(tokens).hidden_BTD[0, t])

    for t in (0, 7):
        grads = jax.grad(output_at)(params, t)
        row_norms = np.linalg.norm(np.asarray(grads["position_embed"][...])[:8], axis=-1)
        assert np.all(row_norms > 0), (t, row_norms)


def test_padding_keys_change_nothing_for_real_tokens(model):
    tokens = _tokens(batch=1, length=8)
    valid = jnp.array([[True] * 5 + [False] * 3])
    padded = model(tokens, valid_BT=valid).hidden_BTD
    other_padding = tokens.at[:, 5:].set((tokens[:, 5:] + 7) % CONFIG.vocab_size)
    changed = model(other_padding, valid_BT=valid).hidden_BTD
    np.testing.assert_allclose(padded[:, :5], changed[:, :5], atol=1e-6)
    alone = model(tokens[:, :5]).hidden_BTD
    np.testing.assert_allclose(padded[:, :5], alone, atol=1e-5)


def test_token_types_and_positions_are_used(model):
    tokens = _tokens(batch=1)
    base = model(tokens).hidden_BTD
    typed = model(tokens, token_types_BT=jnp.ones_like(tokens)).hidden_BTD
    shifted = model(tokens, positions_BT=jnp.arange(8)[None] + 3).hidden_BTD
    assert not np.allclose(base, typed) and not np.allclose(base, shifted)


def test_masked_lm_logits_are_tied_to_word_embeddings():
    mlm = BertForMaskedLM(CONFIG, rngs=nnx.Rngs(0))
    logits, out = mlm(_tokens())
    assert logits.shape == (2, 8, CONFIG.vocab_size) and out.pooled_BD is None
    names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(mlm, nnx.Param))}
    assert "bert/token_embed/embedding" in names and not any("decoder" in n for n in names)
    # logits = transform(h) @ E^T + bias, with E the word embeddings
    h = mlm.mlm_norm(jax.nn.gelu(mlm.mlm_dense(out.hidden_BTD), approximate=False))
    expected = h @ mlm.bert.token_embed.embedding[...].T + mlm.mlm_bias[...]
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_classifier_reads_the_pooled_vector_and_dropout_needs_a_key():
    config = BertConfig.tiny(num_labels=3)
    classifier = BertForSequenceClassification(config, rngs=nnx.Rngs(0))
    tokens = _tokens()
    logits, out = classifier(tokens)
    assert logits.shape == (2, 3)
    expected = out.pooled_BD @ classifier.classifier.kernel[...] + classifier.classifier.bias[...]
    np.testing.assert_allclose(logits, expected, atol=1e-6)
    np.testing.assert_array_equal(logits, classifier(tokens)[0])
    trained = classifier(tokens, dropout_rng=jax.random.key(0))[0]
    assert not np.allclose(trained, logits)


def test_pre_norm_variant_has_a_final_norm():
    pre = BertModel(BertConfig.tiny(pre_norm=True), rngs=nnx.Rngs(0))
    assert pre.final_norm is not None
    assert BertModel(CONFIG, rngs=nnx.Rngs(0)).final_norm is None
    assert np.all(np.isfinite(pre(_tokens()).hidden_BTD))


def test_bad_input_errors_name_the_argument(model):
    with pytest.raises(ValueError, match="tokens must be integers"):
        model(jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="valid must have the shape"):
        model(_tokens(), valid_BT=jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"token_types must lie in \[0, 2\)"):
        model(_tokens(), token_types_BT=jnp.full((2, 8), 2))
    with pytest.raises(ValueError, match="do not fit"):
        model(jnp.zeros((1, 17), jnp.int32))


@pytest.mark.parametrize("field, value", [("num_heads", 3), ("vocab_size", 0),
                                          ("type_vocab_size", 0), ("activation", "tanh"),
                                          ("dropout_rate", 1.0), ("num_labels", 0)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"BertConfig\..*\b{field}\b"):
        BertConfig.tiny(**{field: value})


def test_config_round_trip_and_presets():
    config = BertConfig.preset("minilm_l6")
    assert BertConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown preset"):
        BertConfig.preset("bert_huge")


@pytest.mark.parametrize("preset, count", [("bert_base", 109_482_240), ("minilm_l6", 22_713_216)])
def test_published_shapes_by_eval_shape(preset, count):
    abstract = nnx.eval_shape(lambda: BertModel(BertConfig.preset(preset), rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == count
