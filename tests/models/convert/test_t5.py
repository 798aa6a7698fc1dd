"""Hugging Face T5 (v1.0 and v1.1) checkpoints in and out, number for number against transformers."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxzoo.models import T5, T5Config
from flaxzoo.models.convert import load_hf_t5, save_hf_t5, t5_config_from_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
VERSIONS = {
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def _hf_config(version):
    return transformers.T5Config(vocab_size=48, d_model=16, d_kv=6, d_ff=24, num_layers=2,
                                 num_decoder_layers=3, num_heads=4,
                                 relative_attention_num_buckets=8,
                                 relative_attention_max_distance=12,
                                 attn_implementation="eager", **VERSIONS[version])


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def saved(request, tmp_path_factory):
    torch.manual_seed(0)
    hf_model = transformers.T5ForConditionalGeneration(_hf_config(request.param))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random norm scales, so a misplaced one shows
        for name, p in hf_model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
    hf_model.eval()
    directory = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(directory)
    return request.param, hf_model, directory


def _batch():
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, 48, size=(3, 11))  # long enough to reach the far buckets
    inputs_valid = np.ones((3, 11), bool)
    inputs_valid[1, 7:] = False
    inputs_valid[2, 4:] = False
    inputs[~inputs_valid] = 0
    targets = rng.integers(2, 48, size=(3, 9))
    decoder_inputs = np.concatenate([np.zeros((3, 1), int), targets[:, :-1]], axis=1)
    return inputs, inputs_valid, decoder_inputs


def test_converted_t5_matches_transformers_on_a_padded_batch(saved):
    version, hf_model, directory = saved
    config, model = load_hf_t5(directory)
    # transformers 5 ties the output layer of both versions; v1.1 skips the output scale.
    assert config.scale_tied_logits == (version == "v1.0")
    inputs, inputs_valid, decoder_inputs = _batch()
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(inputs),
                       attention_mask=torch.tensor(inputs_valid.astype(int)),
                       decoder_input_ids=torch.tensor(decoder_inputs), output_hidden_states=True)
    encoded = model.encode(jnp.asarray(inputs), valid_BS=jnp.asarray(inputs_valid))
    valid = inputs_valid[..., None]
    np.testing.assert_allclose(np.asarray(encoded.encoded_BSD) * valid,
                               ref.encoder_last_hidden_state.numpy() * valid, atol=TOL)
    logits = model(jnp.asarray(inputs), jnp.asarray(decoder_inputs),
                   inputs_valid_BS=jnp.asarray(inputs_valid))
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=TOL)


def test_cached_decoding_matches_transformers_step_by_step(saved):
    _, hf_model, directory = saved
    _, model = load_hf_t5(directory)
    inputs, inputs_valid, decoder_inputs = _batch()
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(inputs),
                       attention_mask=torch.tensor(inputs_valid.astype(int)),
                       decoder_input_ids=torch.tensor(decoder_inputs)).logits.numpy()
    encoded = model.encode(jnp.asarray(inputs), valid_BS=jnp.asarray(inputs_valid))
    cache = model.init_decode_cache(encoded, max_len=9)
    steps = []
    for t in range(9):
        logits, cache = model.decode(jnp.asarray(decoder_inputs[:, t:t + 1]),
                                     jnp.full((3, 1), t), cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), ref, atol=TOL)


@pytest.mark.parametrize("version", sorted(VERSIONS) + ["untied"])
def test_export_round_trip_through_transformers(version, tmp_path):
    if version == "untied":  # the v1.1 of transformers 4 and of Google's checkpoints
        config = T5Config.tiny(vocab_size=48, activation="gelu_tanh", gated_mlp=True,
                               tie_word_embeddings=False, relative_max_distance=12)
    else:
        config = t5_config_from_hf(_hf_config(version).to_dict())
    model = T5(config, rngs=nnx.Rngs(2))
    save_hf_t5(model, tmp_path)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs, inputs_valid, decoder_inputs = _batch()
    with torch.no_grad():
        ref = reloaded(input_ids=torch.tensor(inputs),
                       attention_mask=torch.tensor(inputs_valid.astype(int)),
                       decoder_input_ids=torch.tensor(decoder_inputs)).logits.numpy()
    logits = model(jnp.asarray(inputs), jnp.asarray(decoder_inputs),
                   inputs_valid_BS=jnp.asarray(inputs_valid))
    np.testing.assert_allclose(logits, ref, atol=TOL)
    reloaded_config, again = load_hf_t5(tmp_path)
    assert reloaded_config.tie_word_embeddings == config.tie_word_embeddings
    np.testing.assert_allclose(again(jnp.asarray(inputs), jnp.asarray(decoder_inputs),
                                     inputs_valid_BS=jnp.asarray(inputs_valid)), logits, atol=1e-6)


@pytest.mark.parametrize("overrides, match", [
    (dict(feed_forward_proj="gated-relu"), "feed_forward_proj"),
    (dict(model_type="bart"), "not 't5'"),
])
def test_unsupported_options_are_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        t5_config_from_hf({**_hf_config("v1.0").to_dict(), **overrides})


def test_the_original_transformer_has_no_t5_checkpoint(tmp_path):
    model = T5(T5Config.attention_is_all_you_need(vocab_size=32, num_layers=1, embed_dim=16,
                                                  num_heads=2, mlp_dim=32), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="T5Config.position"):
        save_hf_t5(model, tmp_path)
