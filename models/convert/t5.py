"""Hugging Face T5 checkpoints (T5ForConditionalGeneration, v1.0 and v1.1) in and out.

Names on the Hugging Face side (stack = encoder or decoder, block i):
  shared.weight (= encoder/decoder.embed_tokens.weight)     -> token_embed
  {stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight -> {stack}/relative_bias
  {stack}.block.i.layer.0.SelfAttention.{q,k,v,o}.weight      -> {stack}/blocks/i/attn/...
  {stack}.block.i.layer.0.layer_norm.weight                   -> {stack}/blocks/i/attn_norm
  decoder.block.i.layer.1.EncDecAttention.{q,k,v,o}.weight    -> decoder/blocks/i/cross_attn/...
  decoder.block.i.layer.1.layer_norm.weight                   -> decoder/blocks/i/cross_norm
  {stack}.block.i.layer.-1.DenseReluDense.{wi | wi_0, wi_1}, wo -> .../mlp/{fc | fc, up}, proj
  {stack}.block.i.layer.-1.layer_norm.weight                  -> .../mlp_norm
  {stack}.final_layer_norm.weight                             -> {stack}/final_norm
  lm_head.weight (v1.1; tied to shared in v1.0)               -> lm_head
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from flaxzoo.models.convert.hf_io import (
    build_model,
    drop_tied_copy,
    read_hf_config,
    read_hf_weights,
    read_params,
    values_from_table,
    weights_from_table,
    write_hf_checkpoint,
)
from flaxzoo.models.t5 import T5, T5Config

# feed_forward_proj values and the (activation, gated) they are; "gated-gelu" uses the
# tanh GELU in transformers. flaxzoo has no gated ReLU, so "gated-relu" is refused.
_FEED_FORWARD = {"relu": ("relu", False), "gelu": ("gelu", False), "silu": ("silu", False),
                 "gated-gelu": ("gelu_tanh", True), "gated-silu": ("silu", True)}
_HF_FEED_FORWARD = {value: name for name, value in _FEED_FORWARD.items()}
_IGNORABLE = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def t5_config_from_hf(hf: dict) -> T5Config:
    """The T5Config of a Hugging Face T5 config.json; options flaxzoo's T5 cannot
    reproduce are an error rather than an approximation."""
    if hf.get("model_type", "t5") != "t5":
        raise ValueError(f"config.json is a {hf.get('model_type')!r} model, not 't5'")
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _FEED_FORWARD:
        raise ValueError(f"config.json feed_forward_proj={proj!r} is not supported; supported: "
                         f"{sorted(_FEED_FORWARD)}")
    activation, gated = _FEED_FORWARD[proj]
    # transformers 4 marks v1.1 by tie_word_embeddings=False (a separate lm_head, no
    # output scale); transformers 5 always ties and says scale_decoder_outputs=False.
    tied = hf.get("tie_word_embeddings", True)
    return T5Config(
        vocab_size=hf["vocab_size"], max_seq_len=hf.get("n_positions", 512),
        num_layers=hf["num_layers"], num_decoder_layers=hf.get("num_decoder_layers"),
        num_heads=hf["num_heads"], embed_dim=hf["d_model"], mlp_dim=hf["d_ff"],
        head_dim=hf["d_kv"], relative_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        activation=activation, gated_mlp=gated,
        tie_word_embeddings=tied, scale_tied_logits=hf.get("scale_decoder_outputs", tied),
        dropout_rate=hf.get("dropout_rate", 0.1),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        pad_id=hf.get("pad_token_id", 0), decoder_start_id=hf.get("decoder_start_token_id", 0),
    )


def _check_convertible(config: T5Config) -> None:
    t5_like = dict(position="relative", norm="rms_norm", pre_norm=True, use_bias=False,
                   attention_scale=1.0, scale_input_embeddings=False)
    for name, value in t5_like.items():
        if getattr(config, name) != value:
            raise ValueError(f"T5Config.{name}={getattr(config, name)!r} has no Hugging Face T5 "
                             f"equivalent (T5 uses {value!r})")
    if (config.activation, config.gated_mlp) not in _HF_FEED_FORWARD:
        raise ValueError(f"T5Config activation={config.activation!r}, gated_mlp="
                         f"{config.gated_mlp} has no Hugging Face feed_forward_proj")


def _name_pairs(config: T5Config) -> list[tuple[str, str, bool]]:
    """(Hugging Face tensor, flaxzoo parameter path, transposed?) for every parameter."""
    pairs = [("shared.weight", "token_embed/embedding", False)]
    for stack, num_layers in (("encoder", config.num_layers),
                              ("decoder", config.decoder_layers)):
        pairs.append((f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      f"{stack}/relative_bias", False))
        for i in range(num_layers):
            hf, ours = f"{stack}.block.{i}.layer", f"{stack}/blocks/{i}"
            attentions = [(f"{hf}.0.SelfAttention", f"{ours}/attn", f"{hf}.0", "attn_norm")]
            if stack == "decoder":
                attentions.append((f"{hf}.1.EncDecAttention", f"{ours}/cross_attn", f"{hf}.1",
                                   "cross_norm"))
            for hf_attn, our_attn, hf_layer, norm in attentions:
                for hf_name, our_name in (("q", "query"), ("k", "key"), ("v", "value"),
                                          ("o", "out")):
                    pairs.append((f"{hf_attn}.{hf_name}.weight", f"{our_attn}/{our_name}/kernel",
                                  True))
                pairs.append((f"{hf_layer}.layer_norm.weight", f"{ours}/{norm}/scale", False))
            ff = f"{hf}.{2 if stack == 'decoder' else 1}"
            if config.gated_mlp:
                pairs += [(f"{ff}.DenseReluDense.wi_0.weight", f"{ours}/mlp/fc/kernel", True),
                          (f"{ff}.DenseReluDense.wi_1.weight", f"{ours}/mlp/up/kernel", True)]
            else:
                pairs.append((f"{ff}.DenseReluDense.wi.weight", f"{ours}/mlp/fc/kernel", True))
            pairs += [(f"{ff}.DenseReluDense.wo.weight", f"{ours}/mlp/proj/kernel", True),
                      (f"{ff}.layer_norm.weight", f"{ours}/mlp_norm/scale", False)]
        pairs.append((f"{stack}.final_layer_norm.weight", f"{stack}/final_norm/scale", False))
    if not config.tie_word_embeddings:
        pairs.append(("lm_head.weight", "lm_head/kernel", True))
    return pairs


def t5_from_hf_weights(weights: dict[str, np.ndarray], config: T5Config) -> T5:
    """A flaxzoo T5 holding the given T5ForConditionalGeneration tensors."""
    _check_convertible(config)
    weights = dict(weights)
    values = values_from_table(weights, _name_pairs(config))
    # Tied checkpoints may carry a copy of the embedding as lm_head.
    drop_tied_copy(weights, "lm_head.weight", values["token_embed/embedding"], "shared.weight")
    return build_model(T5, config, values, weights, _IGNORABLE)


def load_hf_t5(directory: str | os.PathLike[str]) -> tuple[T5Config, T5]:
    """Loads a local Hugging Face T5 checkpoint directory as (T5Config, T5).

    As transformers does, an lm_head.weight that differs from shared.weight makes
    the output layer separate whatever config.json says about tying.
    """
    hf = read_hf_config(directory)
    config = t5_config_from_hf(hf)
    weights = read_hf_weights(directory)
    head, shared = weights.get("lm_head.weight"), weights.get("shared.weight")
    if config.tie_word_embeddings and head is not None and not np.array_equal(head, shared):
        if hf.get("scale_decoder_outputs", False):
            raise ValueError("config.json scale_decoder_outputs=True with a separate lm_head "
                             "is not supported: flaxzoo scales the output only when tied")
        config = dataclasses.replace(config, tie_word_embeddings=False)
    return config, t5_from_hf_weights(weights, config)


def save_hf_t5(model: T5, directory: str | os.PathLike[str]) -> Path:
    """Writes a flaxzoo T5 as a T5ForConditionalGeneration directory `transformers` loads."""
    if not isinstance(model, T5):
        raise ValueError(f"model must be a T5; got {type(model).__name__}")
    config = model.config
    _check_convertible(config)
    params = read_params(model)
    weights = weights_from_table(params, _name_pairs(config))
    hf_config = {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "is_encoder_decoder": True, "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len, "d_model": config.embed_dim,
        "d_kv": config.block_config(cross_attention=True).head_size, "d_ff": config.mlp_dim,
        "num_layers": config.num_layers, "num_decoder_layers": config.decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_num_buckets,
        "relative_attention_max_distance": config.relative_max_distance,
        "feed_forward_proj": _HF_FEED_FORWARD[(config.activation, config.gated_mlp)],
        "tie_word_embeddings": config.tie_word_embeddings,
        "scale_decoder_outputs": config.tie_word_embeddings and config.scale_tied_logits,
        "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
        "pad_token_id": config.pad_id, "decoder_start_token_id": config.decoder_start_id,
        "eos_token_id": 1,
    }
    return write_hf_checkpoint(directory, hf_config, weights)
