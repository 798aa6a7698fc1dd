"""Hugging Face GPT-2 checkpoints (GPT2LMHeadModel) in and out.

Names on the Hugging Face side (per layer i):
  transformer.wte.weight, transformer.wpe.weight     -> token_embed, position_embed
  transformer.h.i.ln_1.*, transformer.h.i.ln_2.*     -> blocks/i/attn_norm, blocks/i/mlp_norm
  transformer.h.i.attn.c_attn.*  (q, k, v fused)     -> blocks/i/attn/{query,key,value}
  transformer.h.i.attn.c_proj.*                      -> blocks/i/attn/out
  transformer.h.i.mlp.c_fc.*, transformer.h.i.mlp.c_proj.* -> blocks/i/mlp/{fc,proj}
  transformer.ln_f.*                                 -> final_norm
  lm_head.weight                                     tied to wte
GPT-2's Conv1D weights are [in, out], as flaxzoo's kernels are: no transpose.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flaxzoo.models.convert.hf_io import (
    ACTIVATION_FROM_HF,
    ACTIVATION_TO_HF,
    build_model,
    drop_tied_copy,
    read_hf_config,
    read_hf_weights,
    read_params,
    take,
    write_hf_checkpoint,
)
from flaxzoo.models.gpt import GPT, GPTConfig

# Causal-mask buffers older checkpoints carry; they hold no weights.
_IGNORABLE = (".attn.bias", ".attn.masked_bias")


def gpt2_config_from_hf(hf: dict) -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT-2 config.json; options flaxzoo's GPT cannot
    reproduce are an error rather than an approximation."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"config.json is a {hf.get('model_type')!r} model, not 'gpt2'")
    for name, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx",
                                                              False),
                            ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if hf.get(name, supported) != supported:
            raise ValueError(f"config.json {name}={hf[name]!r} is not supported (only "
                             f"{supported!r})")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATION_FROM_HF:
        raise ValueError(f"config.json activation_function={activation!r} is not supported; "
                         f"supported: {sorted(ACTIVATION_FROM_HF)}")
    resid, embd = hf.get("resid_pdrop", 0.1), hf.get("embd_pdrop", 0.1)
    if resid != embd:
        raise ValueError(f"config.json embd_pdrop={embd} differing from resid_pdrop={resid} "
                         f"is not supported (one dropout rate covers both)")
    embed_dim = hf["n_embd"]
    return GPTConfig(
        vocab_size=hf["vocab_size"], max_seq_len=hf["n_positions"], num_layers=hf["n_layer"],
        num_heads=hf["n_head"], embed_dim=embed_dim,
        mlp_dim=hf.get("n_inner") or 4 * embed_dim, activation=ACTIVATION_FROM_HF[activation],
        dropout_rate=resid, attention_dropout_rate=hf.get("attn_pdrop", 0.1),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
    )


def _check_convertible(config: GPTConfig) -> None:
    plain = dict(position="learned", num_kv_heads=None, norm="layer_norm", use_bias=True,
                 gated_mlp=False)
    for name, value in plain.items():
        if getattr(config, name) != value and not (name == "num_kv_heads"
                                                   and config.kv_heads == config.num_heads):
            raise ValueError(f"GPTConfig.{name}={getattr(config, name)!r} has no GPT-2 "
                             f"equivalent (GPT-2 uses {value!r})")
    if config.head_size * config.num_heads != config.embed_dim:
        raise ValueError("GPT-2 needs head_dim * num_heads == embed_dim")


def gpt2_from_hf_weights(weights: dict[str, np.ndarray], config: GPTConfig) -> GPT:
    """A flaxzoo GPT holding the given GPT2LMHeadModel (or GPT2Model) tensors."""
    _check_convertible(config)
    weights = {name.removeprefix("transformer."): value for name, value in weights.items()}
    D = config.embed_dim
    values = {"token_embed/embedding": take(weights, "wte.weight"),
              "position_embed": take(weights, "wpe.weight"),
              "final_norm/scale": take(weights, "ln_f.weight"),
              "final_norm/bias": take(weights, "ln_f.bias")}
    for i in range(config.num_layers):
        hf, ours = f"h.{i}", f"blocks/{i}"
        qkv_kernel, qkv_bias = take(weights, f"{hf}.attn.c_attn.weight"), take(
            weights, f"{hf}.attn.c_attn.bias")
        for j, name in enumerate(("query", "key", "value")):
            values[f"{ours}/attn/{name}/kernel"] = qkv_kernel[:, j * D:(j + 1) * D]
            values[f"{ours}/attn/{name}/bias"] = qkv_bias[j * D:(j + 1) * D]
        for hf_name, our_name in (("attn.c_proj", "attn/out"), ("mlp.c_fc", "mlp/fc"),
                                  ("mlp.c_proj", "mlp/proj")):
            values[f"{ours}/{our_name}/kernel"] = take(weights, f"{hf}.{hf_name}.weight")
            values[f"{ours}/{our_name}/bias"] = take(weights, f"{hf}.{hf_name}.bias")
        for hf_name, our_name in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            values[f"{ours}/{our_name}/scale"] = take(weights, f"{hf}.{hf_name}.weight")
            values[f"{ours}/{our_name}/bias"] = take(weights, f"{hf}.{hf_name}.bias")
    drop_tied_copy(weights, "lm_head.weight", values["token_embed/embedding"],
                   "transformer.wte.weight")
    return build_model(GPT, config, values, weights, _IGNORABLE)


def load_hf_gpt2(directory: str | os.PathLike[str]) -> tuple[GPTConfig, GPT]:
    """Loads a local Hugging Face GPT-2 checkpoint directory (config.json plus
    model.safetensors or pytorch_model.bin) as (GPTConfig, GPT)."""
    config = gpt2_config_from_hf(read_hf_config(directory))
    return config, gpt2_from_hf_weights(read_hf_weights(directory), config)


def save_hf_gpt2(model: GPT, directory: str | os.PathLike[str]) -> Path:
    """Writes a flaxzoo GPT as a GPT2LMHeadModel directory that `transformers` loads."""
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a GPT; got {type(model).__name__}")
    config = model.config
    _check_convertible(config)
    params = read_params(model)
    weights = {"transformer.wte.weight": params["token_embed/embedding"],
               "transformer.wpe.weight": params["position_embed"],
               "transformer.ln_f.weight": params["final_norm/scale"],
               "transformer.ln_f.bias": params["final_norm/bias"]}
    for i in range(config.num_layers):
        hf, ours = f"transformer.h.{i}", f"blocks/{i}"
        names = ("query", "key", "value")
        weights[f"{hf}.attn.c_attn.weight"] = np.concatenate(
            [params[f"{ours}/attn/{n}/kernel"] for n in names], axis=1)
        weights[f"{hf}.attn.c_attn.bias"] = np.concatenate(
            [params[f"{ours}/attn/{n}/bias"] for n in names])
        for hf_name, our_name in (("attn.c_proj", "attn/out"), ("mlp.c_fc", "mlp/fc"),
                                  ("mlp.c_proj", "mlp/proj")):
            weights[f"{hf}.{hf_name}.weight"] = params[f"{ours}/{our_name}/kernel"]
            weights[f"{hf}.{hf_name}.bias"] = params[f"{ours}/{our_name}/bias"]
        for hf_name, our_name in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            weights[f"{hf}.{hf_name}.weight"] = params[f"{ours}/{our_name}/scale"]
            weights[f"{hf}.{hf_name}.bias"] = params[f"{ours}/{our_name}/bias"]
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.max_seq_len,
        "n_layer": config.num_layers, "n_head": config.num_heads, "n_embd": config.embed_dim,
        "n_inner": config.mlp_dim, "activation_function": ACTIVATION_TO_HF[config.activation],
        "resid_pdrop": config.dropout_rate, "embd_pdrop": config.dropout_rate,
        "attn_pdrop": config.attention_dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon, "tie_word_embeddings": True,
    }
    return write_hf_checkpoint(directory, hf_config, weights)
