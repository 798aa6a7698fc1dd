"""Hugging Face GPT-2 checkpoints in and out, number for number against transformers."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxzoo.models import GPT, GPTConfig
from flaxzoo.models.convert import gpt2_config_from_hf, load_hf_gpt2, save_hf_gpt2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_CONFIG = dict(vocab_size=64, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                 attn_implementation="eager")
TOL = 1e-4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_CONFIG))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random norms, so a swapped scale or bias shows
        for name, p in hf_model.named_parameters():
            if ".ln_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2
                        + (1.0 if name.endswith("weight") else 0.0))
    hf_model.eval()
    directory = tmp_path_factory.mktemp("gpt2")
    hf_model.save_pretrained(directory)
    return hf_model, directory


def _left_padded():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=(3, 9))
    valid = np.ones((3, 9), bool)
    valid[1, :4] = False
    valid[2, :7] = False
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    return tokens, valid, positions


def test_converted_gpt2_matches_transformers_on_a_left_padded_batch(saved):
    hf_model, directory = saved
    config, model = load_hf_gpt2(directory)
    assert config.mlp_dim == 128 and config.activation == "gelu_tanh"
    tokens, valid, positions = _left_padded()
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(int)),
                       position_ids=torch.tensor(positions)).logits.numpy()
    logits, _ = model(jnp.asarray(tokens), jnp.asarray(positions), valid_BT=jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(logits)[valid], ref[valid], atol=TOL)


def test_export_round_trip_through_transformers(tmp_path):
    model = GPT(GPTConfig.tiny(vocab_size=40), rngs=nnx.Rngs(3))
    save_hf_gpt2(model, tmp_path)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    tokens = np.random.default_rng(1).integers(0, 40, size=(2, 7))
    with torch.no_grad():
        ref = reloaded(input_ids=torch.tensor(tokens)).logits.numpy()
    logits, _ = model(jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(7), (2, 7)))
    np.testing.assert_allclose(logits, ref, atol=TOL)


@pytest.mark.parametrize("overrides, match", [
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(activation_function="gelu_fast"), "activation_function"),
    (dict(embd_pdrop=0.0), "embd_pdrop"),
    (dict(model_type="bert"), "not 'gpt2'"),
])
def test_unsupported_options_are_errors(overrides, match):
    hf = {**transformers.GPT2Config(**HF_CONFIG).to_dict(), **overrides}
    with pytest.raises(ValueError, match=match):
        gpt2_config_from_hf(hf)


@pytest.mark.parametrize("overrides", [dict(position="rotary"), dict(num_kv_heads=2),
                                       dict(norm="rms_norm"), dict(head_dim=8)])
def test_export_refuses_what_gpt2_cannot_express(overrides, tmp_path):
    model = GPT(GPTConfig.tiny(**overrides), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="GPT-2"):
        save_hf_gpt2(model, tmp_path)


def test_a_bert_checkpoint_is_not_read_as_gpt2(tmp_path):
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=48))
    bert.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not 'gpt2'"):
        load_hf_gpt2(tmp_path)
