"""Hugging Face BERT checkpoints in and out: BertModel, BertForMaskedLM,
BertForSequenceClassification.

Names on the Hugging Face side (per layer i, `bert.` in front for the task models):
  embeddings.{word,position,token_type}_embeddings.weight, embeddings.LayerNorm.*
  encoder.layer.i.attention.self.{query,key,value}.*   -> blocks/i/attn/{query,key,value}
  encoder.layer.i.attention.output.dense.*             -> blocks/i/attn/out
  encoder.layer.i.attention.output.LayerNorm.*         -> blocks/i/attn_norm (post-norm)
  encoder.layer.i.intermediate.dense.*                 -> blocks/i/mlp/fc
  encoder.layer.i.output.dense.*                       -> blocks/i/mlp/proj
  encoder.layer.i.output.LayerNorm.*                   -> blocks/i/mlp_norm
  pooler.dense.*                                       -> pooler
  cls.predictions.transform.{dense,LayerNorm}.*, cls.predictions.bias (MLM head)
  classifier.* (sequence classification head)
torch Linear weights are [out, in]; flaxzoo kernels are [in, out].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flaxzoo.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
)
from flaxzoo.models.convert.hf_io import (
    ACTIVATION_FROM_HF,
    ACTIVATION_TO_HF,
    build_model,
    drop_tied_copy,
    read_hf_config,
    read_hf_weights,
    read_params,
    values_from_table,
    weights_from_table,
    write_hf_checkpoint,
)

ARCHITECTURES = {
    "BertModel": BertModel,
    "BertForMaskedLM": BertForMaskedLM,
    "BertForSequenceClassification": BertForSequenceClassification,
}
# Buffers some checkpoints carry that hold no weights.
_IGNORABLE = ("embeddings.position_ids",)


def bert_config_from_hf(hf: dict) -> BertConfig:
    """The BertConfig of a Hugging Face BERT config.json; options flaxzoo's BERT cannot
    reproduce are an error rather than an approximation."""
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"config.json is a {hf.get('model_type')!r} model, not 'bert'")
    unsupported = {
        "position_embedding_type": ("absolute", hf.get("position_embedding_type", "absolute")),
        "is_decoder": (False, hf.get("is_decoder", False)),
        "add_cross_attention": (False, hf.get("add_cross_attention", False)),
    }
    for name, (supported, value) in unsupported.items():
        if value != supported:
            raise ValueError(f"config.json {name}={value!r} is not supported (only "
                             f"{supported!r})")
    if hf.get("hidden_act", "gelu") not in ACTIVATION_FROM_HF:
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r} is not supported; "
                         f"supported: {sorted(ACTIVATION_FROM_HF)}")
    if hf.get("tie_word_embeddings", True) is False:
        raise ValueError("config.json tie_word_embeddings=False is not supported: flaxzoo's "
                         "masked-LM decoder is the word embedding")
    num_labels = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
    classifier_dropout = hf.get("classifier_dropout")
    if classifier_dropout is not None and classifier_dropout != hf.get("hidden_dropout_prob"):
        raise ValueError("config.json classifier_dropout differing from hidden_dropout_prob "
                         "is not supported")
    return BertConfig(
        vocab_size=hf["vocab_size"], max_seq_len=hf["max_position_embeddings"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        embed_dim=hf["hidden_size"], mlp_dim=hf["intermediate_size"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        activation=ACTIVATION_FROM_HF[hf.get("hidden_act", "gelu")],
        dropout_rate=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12), num_labels=int(num_labels),
    )


def _linear(hf: str, ours: str) -> list[tuple[str, str, bool]]:
    """A torch Linear ([out, in] weight) and a flaxzoo nnx.Linear ([in, out] kernel)."""
    return [(f"{hf}.weight", f"{ours}/kernel", True), (f"{hf}.bias", f"{ours}/bias", False)]


def _norm(hf: str, ours: str) -> list[tuple[str, str, bool]]:
    return [(f"{hf}.weight", f"{ours}/scale", False), (f"{hf}.bias", f"{ours}/bias", False)]


def _name_pairs(config: BertConfig, architecture: str) -> list[tuple[str, str, bool]]:
    """(Hugging Face tensor, flaxzoo parameter path, transposed?) for every parameter:
    the one table both directions of the conversion read."""
    hf_prefix, ours_prefix = ("", "") if architecture == "BertModel" else ("bert.", "bert/")
    pairs = [(f"{hf_prefix}embeddings.word_embeddings.weight", "token_embed/embedding", False),
             (f"{hf_prefix}embeddings.position_embeddings.weight", "position_embed", False),
             (f"{hf_prefix}embeddings.token_type_embeddings.weight",
              "token_type_embed/embedding", False),
             *_norm(f"{hf_prefix}embeddings.LayerNorm", "embed_norm")]
    for i in range(config.num_layers):
        hf, ours = f"{hf_prefix}encoder.layer.{i}", f"blocks/{i}"
        for name in ("query", "key", "value"):
            pairs += _linear(f"{hf}.attention.self.{name}", f"{ours}/attn/{name}")
        pairs += _linear(f"{hf}.attention.output.dense", f"{ours}/attn/out")
        pairs += _norm(f"{hf}.attention.output.LayerNorm", f"{ours}/attn_norm")
        pairs += _linear(f"{hf}.intermediate.dense", f"{ours}/mlp/fc")
        pairs += _linear(f"{hf}.output.dense", f"{ours}/mlp/proj")
        pairs += _norm(f"{hf}.output.LayerNorm", f"{ours}/mlp_norm")
    if architecture != "BertForMaskedLM":  # BertForMaskedLM is built without a pooler
        pairs += _linear(f"{hf_prefix}pooler.dense", "pooler")
    pairs = [(hf, ours_prefix + ours, transpose) for hf, ours, transpose in pairs]
    if architecture == "BertForMaskedLM":
        pairs += _linear("cls.predictions.transform.dense", "mlm_dense")
        pairs += _norm("cls.predictions.transform.LayerNorm", "mlm_norm")
        pairs.append(("cls.predictions.bias", "mlm_bias", False))
    elif architecture == "BertForSequenceClassification":
        pairs += _linear("classifier", "classifier")
    return pairs


def bert_from_hf_weights(weights: dict[str, np.ndarray], config: BertConfig,
                         architecture: str = "BertModel"):
    """A flaxzoo model of `architecture` holding the given Hugging Face tensors."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}; "
                         f"got {architecture!r}")
    weights = dict(weights)
    if architecture == "BertModel" and any(name.startswith("bert.") for name in weights):
        # The encoder of a task checkpoint: drop the task head's tensors.
        weights = {name.removeprefix("bert."): value for name, value in weights.items()
                   if name.startswith("bert.")}
    values = values_from_table(weights, _name_pairs(config, architecture))
    if architecture == "BertForMaskedLM":
        drop_tied_copy(weights, "cls.predictions.decoder.weight",
                       values["bert/token_embed/embedding"], "the word embeddings")
        weights.pop("cls.predictions.decoder.bias", None)  # the same tensor as predictions.bias
        for name in ("weight", "bias"):  # an unused pooler some MLM checkpoints carry
            weights.pop(f"bert.pooler.dense.{name}", None)
    return build_model(ARCHITECTURES[architecture], config, values, weights, _IGNORABLE)


def load_hf_bert(directory: str | os.PathLike[str], architecture: str | None = None):
    """Loads a local Hugging Face BERT checkpoint directory.

    Args:
      directory: holds config.json and model.safetensors (or pytorch_model.bin).
      architecture: "BertModel", "BertForMaskedLM" or "BertForSequenceClassification";
        default: the first entry of config.json's "architectures", else BertModel.

    Returns:
      (BertConfig, the flaxzoo model with the checkpoint's weights).
    """
    hf = read_hf_config(directory)
    config = bert_config_from_hf(hf)
    if architecture is None:
        architecture = (hf.get("architectures") or ["BertModel"])[0]
    return config, bert_from_hf_weights(read_hf_weights(directory), config, architecture)


def save_hf_bert(model, directory: str | os.PathLike[str]) -> Path:
    """Writes a flaxzoo BERT model as a Hugging Face checkpoint that `transformers` loads
    with `from_pretrained` (the architecture follows the model's class)."""
    architecture = next((name for name, cls in ARCHITECTURES.items() if type(model) is cls),
                        None)
    if architecture is None:
        raise ValueError(f"model must be one of {sorted(ARCHITECTURES)}; "
                         f"got {type(model).__name__}")
    encoder = model if architecture == "BertModel" else model.bert
    config = encoder.config
    if config.pre_norm or config.head_dim not in (None, config.embed_dim // config.num_heads):
        raise ValueError("only post-norm BERT with head_dim = embed_dim / num_heads has a "
                         "Hugging Face equivalent")
    weights = weights_from_table(read_params(model), _name_pairs(config, architecture))
    hf_config = {
        "architectures": [architecture], "model_type": "bert",
        "vocab_size": config.vocab_size, "max_position_embeddings": config.max_seq_len,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "hidden_size": config.embed_dim, "intermediate_size": config.mlp_dim,
        "type_vocab_size": config.type_vocab_size,
        "hidden_act": ACTIVATION_TO_HF[config.activation],
        "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": config.attention_dropout_rate,
        "layer_norm_eps": config.layer_norm_epsilon, "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "id2label": {str(i): f"LABEL_{i}" for i in range(config.num_labels)},
        "label2id": {f"LABEL_{i}": i for i in range(config.num_labels)},
    }
    return write_hf_checkpoint(directory, hf_config, weights)
