"""The one Block type against Hugging Face's BERT, GPT-2 and T5 layers, plus its options.

Each reference layer is built from a config with random weights (nothing is
downloaded); its weights are copied into a flaxzoo Block and both run on the same
input. BERT checks post-norm LayerNorm with exact GELU and padding masks; GPT-2
pre-norm with tanh GELU and a causal mask; T5 RMSNorm, no biases, scale 1.0, an
additive relative-position bias, cross-attention and ReLU / gated-GELU feedforwards.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxzoo.layers import causal_mask, padding_mask, relative_position_bias
from flaxzoo.models.blocks import Block, BlockConfig, RotaryConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

B, T, S, D, N, F = 2, 5, 7, 16, 4, 32


def _t(x):
    return torch.tensor(np.asarray(x, np.float32))


def _set_linear(linear: nnx.Linear, torch_linear, *, transpose=True):
    weight = torch_linear.weight.detach().numpy()
    linear.kernel[...] = jnp.asarray(weight.T if transpose else weight)
    if getattr(torch_linear, "bias", None) is not None:
        linear.bias[...] = jnp.asarray(torch_linear.bias.detach().numpy())


def _set_norm(norm, torch_norm):
    norm.scale[...] = jnp.asarray(torch_norm.weight.detach().numpy())
    if getattr(norm, "bias", None) is not None:
        norm.bias[...] = jnp.asarray(torch_norm.bias.detach().numpy())


def _randomise(module):
    """Random norm weights too, so a scale or bias copied to the wrong place shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.5 if "weight" in name else 0.1)
                    + (1.0 if "LayerNorm.weight" in name or "ln_" in name or "layer_norm" in name
                       else 0.0))
    return module.eval()


def _x(seed=0, length=T):
    return np.random.default_rng(seed).normal(size=(B, length, D)).astype(np.float32)


def test_post_norm_block_matches_bert_layer_with_padding():
    from transformers.models.bert.modeling_bert import BertLayer

    hf_config = transformers.BertConfig(hidden_size=D, num_attention_heads=N, intermediate_size=F,
                                        hidden_act="gelu", layer_norm_eps=1e-12,
                                        attn_implementation="eager")
    ref = _randomise(BertLayer(hf_config))
    config = BlockConfig(embed_dim=D, num_heads=N, mlp_dim=F, pre_norm=False, activation="gelu",
                         norm_epsilon=1e-12)
    block = Block(config, num_layers=1, rngs=nnx.Rngs(0))
    attn = ref.attention
    for ours, theirs in ((block.attn.query, attn.self.query), (block.attn.key, attn.self.key),
                         (block.attn.value, attn.self.value), (block.attn.out, attn.output.dense),
                         (block.mlp.fc, ref.intermediate.dense), (block.mlp.proj, ref.output.dense)):
        _set_linear(ours, theirs)
    _set_norm(block.attn_norm, attn.output.LayerNorm)
    _set_norm(block.mlp_norm, ref.output.LayerNorm)

    x = _x()
    valid = np.array([[1] * T, [1] * (T - 2) + [0, 0]], bool)
    additive = np.where(valid, 0.0, np.finfo(np.float32).min)[:, None, None, :]
    with torch.no_grad():
        expected = ref(_t(x), attention_mask=_t(additive))
    expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
    got = block(jnp.asarray(x), mask=padding_mask(valid)).x_BTD
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_pre_norm_block_matches_gpt2_block():
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    hf_config = transformers.GPT2Config(n_embd=D, n_head=N, n_inner=F, n_positions=16,
                                        activation_function="gelu_new",
                                        attn_implementation="eager")
    ref = _randomise(GPT2Block(hf_config, layer_idx=0))
    block = Block(BlockConfig(embed_dim=D, num_heads=N, mlp_dim=F), num_layers=1,
                  rngs=nnx.Rngs(0))
    # GPT-2's Conv1D holds [in, out] weights already; c_attn packs q, k, v.
    qkv_w = ref.attn.c_attn.weight.detach().numpy()
    qkv_b = ref.attn.c_attn.bias.detach().numpy()
    for i, linear in enumerate((block.attn.query, block.attn.key, block.attn.value)):
        linear.kernel[...] = jnp.asarray(qkv_w[:, i * D:(i + 1) * D])
        linear.bias[...] = jnp.asarray(qkv_b[i * D:(i + 1) * D])
    _set_linear(block.attn.out, ref.attn.c_proj, transpose=False)
    _set_linear(block.mlp.fc, ref.mlp.c_fc, transpose=False)
    _set_linear(block.mlp.proj, ref.mlp.c_proj, transpose=False)
    _set_norm(block.attn_norm, ref.ln_1)
    _set_norm(block.mlp_norm, ref.ln_2)

    x = _x(1)
    additive = np.where(np.asarray(causal_mask(T)), 0.0, np.finfo(np.float32).min)[None, None]
    with torch.no_grad():
        expected = ref(_t(x), attention_mask=_t(np.broadcast_to(additive, (B, 1, T, T))))
    expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
    got = block(jnp.asarray(x), mask=causal_mask(T)).x_BTD
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_decoder_block_with_cross_attention_matches_t5_block(feed_forward_proj):
    from transformers.models.t5.modeling_t5 import T5Block

    d_kv = 6  # head dim != D / N, as T5 allows
    hf_config = transformers.T5Config(d_model=D, d_kv=d_kv, d_ff=F, num_heads=N, is_decoder=True,
                                      feed_forward_proj=feed_forward_proj,
                                      attn_implementation="eager")
    ref = _randomise(T5Block(hf_config, has_relative_attention_bias=False, layer_idx=0))
    gated = feed_forward_proj == "gated-gelu"
    config = BlockConfig(embed_dim=D, num_heads=N, head_dim=d_kv, mlp_dim=F, norm="rms_norm",
                         norm_epsilon=1e-6, use_bias=False, attention_scale=1.0,
                         activation="gelu_tanh" if gated else "relu", gated_mlp=gated,
                         cross_attention=True)
    block = Block(config, num_layers=1, rngs=nnx.Rngs(0))
    self_attn, cross_attn, ff = ref.layer[0].SelfAttention, ref.layer[1].EncDecAttention, ref.layer[2]
    for ours, theirs in ((block.attn, self_attn), (block.cross_attn, cross_attn)):
        for linear, torch_linear in ((ours.query, theirs.q), (ours.key, theirs.k),
                                     (ours.value, theirs.v), (ours.out, theirs.o)):
            _set_linear(linear, torch_linear)
    if gated:
        _set_linear(block.mlp.fc, ff.DenseReluDense.wi_0)
        _set_linear(block.mlp.up, ff.DenseReluDense.wi_1)
    else:
        _set_linear(block.mlp.fc, ff.DenseReluDense.wi)
    _set_linear(block.mlp.proj, ff.DenseReluDense.wo)
    _set_norm(block.attn_norm, ref.layer[0].layer_norm)
    _set_norm(block.cross_norm, ref.layer[1].layer_norm)
    _set_norm(block.mlp_norm, ref.layer[2].layer_norm)

    x, encoded = _x(2), _x(3, length=S)
    table = np.random.default_rng(4).normal(size=(32, N)).astype(np.float32)
    bias = relative_position_bias(table, np.arange(T), np.arange(T), bidirectional=False)
    enc_valid = np.array([[1] * S, [1] * (S - 3) + [0] * 3], bool)
    big_negative = np.finfo(np.float32).min
    self_additive = np.where(np.asarray(causal_mask(T)), 0.0, big_negative)[None, None]
    cross_additive = np.where(enc_valid, 0.0, big_negative)[:, None, None, :]
    with torch.no_grad():
        expected = ref(_t(x), attention_mask=_t(np.broadcast_to(self_additive, (B, 1, T, T))),
                       position_bias=_t(bias), encoder_hidden_states=_t(encoded),
                       encoder_attention_mask=_t(cross_additive),
                       encoder_decoder_position_bias=torch.zeros(1, N, T, S))[0].numpy()
    cross_kv = block.cross_attn.cross_kv(jnp.asarray(encoded))
    got = block(jnp.asarray(x), mask=causal_mask(T), bias=bias, cross_kv=cross_kv,
                cross_mask=padding_mask(enc_valid)).x_BTD
    np.testing.assert_allclose(got, expected, atol=1e-4)


# ---------------------------------------------------------------- options and properties

SMALL = BlockConfig(embed_dim=D, num_heads=N, mlp_dim=F)


def test_grouped_heads_equal_repeated_key_value_projections():
    grouped = Block(dataclasses.replace(SMALL, num_kv_heads=2), num_layers=1, rngs=nnx.Rngs(0))
    full = Block(SMALL, num_layers=1, rngs=nnx.Rngs(1))
    H = D // N
    # Copy everything, then give each full head the weights of its group's kv head.
    nnx.update(full, nnx.state(grouped, nnx.Param).filter(lambda path, _: "key" not in path
                                                           and "value" not in path))
    for name in ("key", "value"):
        kernel = getattr(grouped.attn, name).kernel[...].reshape(D, 2, H)
        bias = getattr(grouped.attn, name).bias[...].reshape(2, H)
        getattr(full.attn, name).kernel[...] = jnp.repeat(kernel, 2, axis=1).reshape(D, N * H)
        getattr(full.attn, name).bias[...] = jnp.repeat(bias, 2, axis=0).reshape(N * H)
    x = jnp.asarray(_x(5))
    np.testing.assert_allclose(grouped(x, mask=causal_mask(T)).x_BTD,
                               full(x, mask=causal_mask(T)).x_BTD, atol=1e-5)
    assert grouped.attn.key.kernel.shape == (D, 2 * H)


def test_gated_mlp_is_act_of_gate_times_up():
    block = Block(dataclasses.replace(SMALL, activation="silu", gated_mlp=True), num_layers=1,
                  rngs=nnx.Rngs(0))
    x = np.asarray(_x(6))
    mlp = block.mlp
    gate = x @ np.asarray(mlp.fc.kernel[...]) + np.asarray(mlp.fc.bias[...])
    up = x @ np.asarray(mlp.up.kernel[...]) + np.asarray(mlp.up.bias[...])
    hidden = gate / (1 + np.exp(-gate)) * up
    expected = hidden @ np.asarray(mlp.proj.kernel[...]) + np.asarray(mlp.proj.bias[...])
    np.testing.assert_allclose(mlp(jnp.asarray(x)), expected, atol=1e-4)


def test_rotary_attention_depends_only_on_relative_positions():
    block = Block(dataclasses.replace(SMALL, rotary=RotaryConfig(layout="interleaved")),
                  num_layers=1, rngs=nnx.Rngs(0))
    attn = block.attn
    for linear in (attn.query, attn.key):  # sharpen attention so positions matter
        linear.kernel[...] = linear.kernel[...] * 30.0
    x = jnp.asarray(_x(7))
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))

    def run(positions_BT):
        return attn(x, mask=causal_mask(T), positions_BT=positions_BT, return_weights=True)

    out, _, weights = run(positions)
    shifted, _, shifted_weights = run(positions + 37)
    np.testing.assert_allclose(shifted_weights, weights, atol=1e-4)
    np.testing.assert_allclose(shifted, out, atol=1e-4)
    _, _, spread_weights = run(positions * 3)
    assert not np.allclose(spread_weights, weights, atol=1e-2)
    with pytest.raises(ValueError, match="positions_BT"):
        block(x, mask=causal_mask(T))


def test_weights_are_returned_per_head_and_rows_sum_to_one():
    block = Block(dataclasses.replace(SMALL, cross_attention=True), num_layers=1, rngs=nnx.Rngs(0))
    kv = block.cross_attn.cross_kv(jnp.asarray(_x(8, length=S)))
    out = block(jnp.asarray(_x(9)), mask=causal_mask(T), cross_kv=kv, return_weights=True)
    assert out.self_weights_BNTS.shape == (B, N, T, T)
    assert out.cross_weights_BNTS.shape == (B, N, T, S)
    np.testing.assert_allclose(out.self_weights_BNTS.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.triu(np.asarray(out.self_weights_BNTS[0, 0]), 1), 0.0)
    with pytest.raises(ValueError, match="cross_kv"):
        block(jnp.asarray(_x(9)), mask=causal_mask(T))


def test_dropout_only_with_rngs_and_on_attention_weights():
    config = dataclasses.replace(SMALL, dropout_rate=0.0, attention_dropout_rate=0.5)
    block = Block(config, num_layers=1, rngs=nnx.Rngs(0))
    x = jnp.asarray(_x(10))
    eval_out = block(x, mask=causal_mask(T)).x_BTD
    np.testing.assert_array_equal(eval_out, block(x, mask=causal_mask(T)).x_BTD)
    train = block(x, mask=causal_mask(T), rngs=nnx.Rngs(dropout=1), return_weights=True)
    weights = np.asarray(train.self_weights_BNTS)
    assert np.any(weights[np.asarray(causal_mask(T))[None, None].repeat(B, 0).repeat(N, 1)] == 0)
    assert not np.allclose(train.x_BTD, eval_out)


@pytest.mark.parametrize("overrides, field", [
    (dict(num_heads=3), "embed_dim"),
    (dict(num_kv_heads=3), "num_kv_heads"),
    (dict(norm="batch_norm"), "norm"),
    (dict(activation="tanh"), "activation"),
    (dict(activation="relu", gated_mlp=True), "activation"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(attention_scale=0.0), "attention_scale"),
    (dict(head_dim=6, rotary=RotaryConfig(rotary_dim=8)), "rotary"),
    (dict(mlp_dim=0), "mlp_dim"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"BlockConfig.{field}"):
        dataclasses.replace(SMALL, **overrides)


def test_rotary_config_is_validated():
    with pytest.raises(ValueError, match="RotaryConfig.layout"):
        RotaryConfig(layout="spiral")
