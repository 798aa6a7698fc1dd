"""apply_rope and rope_inverse_frequencies against numpy formulas, Hugging Face
(Llama rotate-half, GPT-J interleaved, the linear and dynamic-NTK scalings) and
properties of rotations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flaxzoo.layers.rope import RopeScaling, apply_rope, rope_inverse_frequencies

FAST = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------- references


def numpy_inv_freq(dim, base):
    return np.array([base ** (-(2 * i) / dim) for i in range(dim // 2)])


def numpy_rope(x, positions, *, base=10000.0, layout="half", rotary_dim=None, inv_freq=None):
    """RoPE written pair by pair in float64: rotate (x[a], x[b]) by p * inv_freq[i]."""
    x = np.asarray(x, np.float64)
    B, T, N, H = x.shape
    R = H if rotary_dim is None else rotary_dim
    inv_freq = numpy_inv_freq(R, base) if inv_freq is None else np.asarray(inv_freq, np.float64)
    positions = np.broadcast_to(positions, (B, T))
    out = x.copy()
    for b in range(B):
        for t in range(T):
            for i in range(R // 2):
                a, c = (i, i + R // 2) if layout == "half" else (2 * i, 2 * i + 1)
                theta = positions[b, t] * inv_freq[i]
                xa, xc = x[b, t, :, a], x[b, t, :, c]
                out[b, t, :, a] = xa * math.cos(theta) - xc * math.sin(theta)
                out[b, t, :, c] = xc * math.cos(theta) + xa * math.sin(theta)
    return out


def _torch():
    return pytest.importorskip("torch")


def _llama_config(head_dim, base, rope_parameters=None, max_len=64):
    transformers = pytest.importorskip("transformers")
    params = {"rope_type": "default", "rope_theta": base}
    params.update(rope_parameters or {})
    return transformers.LlamaConfig(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_len,
        rope_parameters=params,
    )


def hf_llama_rope(x_BTNH, positions_BT, config):
    """Llama's own cos/sin and apply_rotary_pos_emb (rotate_half layout)."""
    torch = _torch()
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    x = torch.tensor(np.asarray(x_BTNH)).transpose(1, 2)  # [B, N, T, H] as Llama holds it
    rotary = LlamaRotaryEmbedding(config)  # fresh: its dynamic scaling keeps state
    cos, sin = rotary(x, torch.tensor(np.asarray(positions_BT)))
    out, _ = apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=1)
    return out.transpose(1, 2).numpy()


# ---------------------------------------------------------------- numpy formula


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("batched_positions", [False, True])
def test_matches_numpy_formula(layout, batched_positions):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    positions = rng.integers(0, 300, size=(2, 5) if batched_positions else (5,))
    got = apply_rope(x, positions, layout=layout, base=500.0)
    np.testing.assert_allclose(got, numpy_rope(x, positions, layout=layout, base=500.0), atol=2e-5)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_partial_rotary_dim_passes_the_rest_through(layout):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 2, 10)).astype(np.float32)
    positions = np.array([0, 3, 7, 11])
    got = np.asarray(apply_rope(x, positions, layout=layout, rotary_dim=4))
    np.testing.assert_allclose(got, numpy_rope(x, positions, layout=layout, rotary_dim=4), atol=2e-5)
    np.testing.assert_array_equal(got[..., 4:], x[..., 4:])


def test_interleaved_is_half_on_permuted_channels():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 2, 8)).astype(np.float32)
    positions = np.array([[1, 2, 40], [5, 0, 9]])
    # channel 2i of the interleaved layout plays the role of channel i of "half",
    # channel 2i + 1 that of channel i + 4.
    to_half = np.concatenate([np.arange(0, 8, 2), np.arange(1, 8, 2)])
    inter = np.asarray(apply_rope(x, positions, layout="interleaved"))
    half = np.asarray(apply_rope(x[..., to_half], positions, layout="half"))
    np.testing.assert_allclose(half, inter[..., to_half], atol=1e-6)


def test_position_zero_is_identity_and_plane_zero_turns_one_radian():
    x = np.zeros((1, 2, 1, 4), np.float32)
    x[..., 0] = 1.0  # unit vector in the first plane (channels 0 and 2 for "half")
    # inv_freq[0] = base ** 0 = 1: plane 0 turns by 1 radian per position.
    out = np.asarray(apply_rope(x, np.array([0, 1])))
    np.testing.assert_allclose(out[0, 0, 0], [1, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(out[0, 1, 0], [math.cos(1.0), 0, math.sin(1.0), 0], atol=1e-6)


def test_inverse_frequencies_formula_and_ntk():
    np.testing.assert_allclose(rope_inverse_frequencies(8, base=10000.0), numpy_inv_freq(8, 10000.0),
                               rtol=1e-6)
    ntk = rope_inverse_frequencies(8, scaling=RopeScaling(kind="ntk", factor=4.0))
    np.testing.assert_allclose(ntk, numpy_inv_freq(8, 10000.0 * 4.0 ** (8 / 6)), rtol=1e-6)
    # NTK leaves the fastest plane alone and slows the slowest by exactly the factor.
    assert float(ntk[0]) == 1.0
    lin = rope_inverse_frequencies(8, scaling=RopeScaling(kind="linear", factor=4.0))
    np.testing.assert_allclose(lin, numpy_inv_freq(8, 10000.0) / 4.0, rtol=1e-6)


def test_linear_scaling_equals_dividing_positions():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 4, 2, 8)).astype(np.float32)
    positions = np.array([0, 4, 8, 100])
    got = apply_rope(x, positions, scaling=RopeScaling(kind="linear", factor=4.0))
    np.testing.assert_allclose(got, numpy_rope(x, positions / 4.0), atol=2e-5)


# ---------------------------------------------------------------- Hugging Face parity


@pytest.mark.parametrize("batched_positions", [False, True])
def test_half_layout_matches_llama(batched_positions):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 6, 3, 16)).astype(np.float32)
    positions = rng.integers(0, 2000, size=(2, 6))
    if not batched_positions:
        positions = positions[:1]  # Llama wants [B or 1, T]; ours takes [T]
    ref = hf_llama_rope(x, positions, _llama_config(16, 10000.0))
    got = apply_rope(x, positions if batched_positions else positions[0], layout="half")
    np.testing.assert_allclose(got, ref, atol=5e-4)  # angles up to 2000 rad in float32


def test_interleaved_layout_matches_gptj_with_partial_rotary_dim():
    torch = _torch()
    pytest.importorskip("transformers")
    from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb, create_sinusoidal_positions

    rng = np.random.default_rng(5)
    B, T, N, H, R = 2, 5, 3, 12, 8
    x = rng.normal(size=(B, T, N, H)).astype(np.float32)
    positions = rng.integers(0, 64, size=(B, T))
    sincos = create_sinusoidal_positions(64, R)[torch.tensor(positions)]
    sin, cos = torch.split(sincos, R // 2, dim=-1)
    x_t = torch.tensor(x)
    rot = apply_rotary_pos_emb(x_t[..., :R], sin, cos)  # GPT-J holds [B, T, N, H]
    ref = torch.cat([rot, x_t[..., R:]], dim=-1).numpy()
    got = apply_rope(x, positions, layout="interleaved", rotary_dim=R)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_linear_scaling_matches_transformers():
    pytest.importorskip("torch")
    from transformers.modeling_rope_utils import _compute_linear_scaling_rope_parameters

    config = _llama_config(16, 500.0, {"rope_type": "linear", "factor": 3.0})
    ref, _ = _compute_linear_scaling_rope_parameters(config)
    got = rope_inverse_frequencies(16, base=500.0, scaling=RopeScaling(kind="linear", factor=3.0))
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-6)


@pytest.mark.parametrize("seq_len", [10, 64, 65, 100, 1000])
def test_dynamic_ntk_matches_transformers(seq_len):
    pytest.importorskip("torch")
    from transformers.modeling_rope_utils import _compute_dynamic_ntk_parameters

    config = _llama_config(16, 10000.0, {"rope_type": "dynamic", "factor": 4.0}, max_len=64)
    ref, _ = _compute_dynamic_ntk_parameters(config, seq_len=seq_len)
    scaling = RopeScaling(kind="dynamic", factor=4.0, original_max_len=64)
    got = rope_inverse_frequencies(16, scaling=scaling, seq_len=seq_len)
    np.testing.assert_allclose(got, ref.numpy(), rtol=2e-6)
    if seq_len <= 64:  # inside the trained context nothing changes
        np.testing.assert_allclose(got, rope_inverse_frequencies(16), rtol=1e-7)


def test_ntk_matches_transformers_dynamic_at_the_equivalent_length():
    # Dynamic NTK with factor 1 at length a * L0 raises the base by a ** (R / (R - 2)),
    # which is static NTK with factor a.
    pytest.importorskip("torch")
    from transformers.modeling_rope_utils import _compute_dynamic_ntk_parameters

    config = _llama_config(8, 10000.0, {"rope_type": "dynamic", "factor": 1.0}, max_len=32)
    ref, _ = _compute_dynamic_ntk_parameters(config, seq_len=3 * 32)
    got = rope_inverse_frequencies(8, scaling=RopeScaling(kind="ntk", factor=3.0))
    np.testing.assert_allclose(got, ref.numpy(), rtol=2e-6)


def test_dynamic_apply_rope_matches_llama_including_default_seq_len():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 4, 2, 8)).astype(np.float32)
    positions = np.array([[0, 50, 90, 120], [3, 4, 5, 6]])  # max 120 > original 32
    config = _llama_config(8, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, max_len=32)
    ref = hf_llama_rope(x, positions, config)
    scaling = RopeScaling(kind="dynamic", factor=2.0, original_max_len=32)
    got = apply_rope(x, positions, scaling=scaling)  # seq_len = max(positions) + 1
    np.testing.assert_allclose(got, ref, atol=1e-4)
    jitted = jax.jit(lambda x, p: apply_rope(x, p, scaling=scaling))(x, positions)
    np.testing.assert_allclose(jitted, got, atol=1e-5)
    # An explicit seq_len overrides the default.
    assert not np.allclose(apply_rope(x, positions, scaling=scaling, seq_len=200), got, atol=1e-3)


# ---------------------------------------------------------------- properties


def _pairs(x, layout):
    R = x.shape[-1]
    if layout == "half":
        return x[..., : R // 2], x[..., R // 2 :]
    return x[..., 0::2], x[..., 1::2]


@FAST
@given(seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(["half", "interleaved"]),
       head_dim=st.sampled_from([2, 4, 8]), max_pos=st.sampled_from([10, 10_000]))
def test_rotation_keeps_the_norm_of_every_pair(seed, layout, head_dim, max_pos):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 3, 2, head_dim)).astype(np.float32)
    positions = rng.integers(0, max_pos, size=(2, 3))
    out = np.asarray(apply_rope(x, positions, layout=layout))
    (a, b), (ra, rb) = _pairs(x, layout), _pairs(out, layout)
    np.testing.assert_allclose(np.hypot(ra, rb), np.hypot(a, b), rtol=1e-5, atol=1e-6)


@FAST
@given(seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(["half", "interleaved"]),
       q_pos=st.integers(0, 500), k_pos=st.integers(0, 500), shift=st.integers(-500, 500))
def test_dot_product_depends_only_on_relative_position(seed, layout, q_pos, k_pos, shift):
    shift = max(shift, -min(q_pos, k_pos))  # keep positions >= 0
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)
    k = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)

    def dot(pq, pk):
        rq = np.asarray(apply_rope(q, np.array([pq]), layout=layout), np.float64)
        rk = np.asarray(apply_rope(k, np.array([pk]), layout=layout), np.float64)
        return float(np.sum(rq * rk))

    np.testing.assert_allclose(dot(q_pos + shift, k_pos + shift), dot(q_pos, k_pos), atol=2e-3)


@FAST
@given(seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(["half", "interleaved"]),
       offset=st.integers(0, 12), length=st.integers(1, 4))
def test_cache_offset_is_shifted_positions(seed, layout, offset, length):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 16, 2, 8)).astype(np.float32)
    full = np.asarray(apply_rope(x, np.arange(16), layout=layout))
    step = apply_rope(x[:, offset : offset + length], np.arange(offset, offset + length), layout=layout)
    np.testing.assert_allclose(step, full[:, offset : offset + length], atol=1e-6)
    # Per-row offsets: row b starts at its own position.
    starts = np.array([offset, 16 - length])
    rows = np.stack([x[b, s : s + length] for b, s in enumerate(starts)])
    step_rows = apply_rope(rows, starts[:, None] + np.arange(length), layout=layout)
    np.testing.assert_allclose(step_rows, np.stack([full[b, s : s + length] for b, s in enumerate(starts)]),
                               atol=1e-6)


@FAST
@given(seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(["half", "interleaved"]),
       dtype=st.sampled_from([jnp.float16, jnp.bfloat16]))
def test_low_precision_inputs_are_close_to_float32(seed, layout, dtype):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(1, 4, 2, 8)), dtype)
    positions = rng.integers(0, 4096, size=(4,))
    out = apply_rope(x, positions, layout=layout)
    assert out.dtype == dtype
    ref = np.asarray(apply_rope(x.astype(jnp.float32), positions, layout=layout))
    eps = float(jnp.finfo(dtype).eps)
    # The rotation itself runs in float32; only the final rounding to `dtype` is lost.
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=eps, atol=eps)


# ---------------------------------------------------------------- errors


def test_errors_name_the_argument():
    x = np.zeros((1, 3, 2, 8), np.float32)
    pos = np.arange(3)
    with pytest.raises(ValueError, match=r"head dim of x must be even.*\(1, 3, 2, 7\)"):
        apply_rope(np.zeros((1, 3, 2, 7)), pos)
    with pytest.raises(ValueError, match=r"positions must have shape.*\(1, 3\).*got \(4,\)"):
        apply_rope(x, np.arange(4))
    with pytest.raises(ValueError, match=r"positions must have shape.*got \(2, 3\)"):
        apply_rope(x, np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="positions must be integers"):
        apply_rope(x, pos.astype(np.float32))
    with pytest.raises(ValueError, match=r"x must have shape.*\(3, 2, 8\)"):
        apply_rope(x[0], pos)
    with pytest.raises(ValueError, match="layout"):
        apply_rope(x, pos, layout="halves")
    for bad in (0, 3, 10):
        with pytest.raises(ValueError, match="rotary_dim"):
            apply_rope(x, pos, rotary_dim=bad)
    with pytest.raises(ValueError, match="dim must be a positive even"):
        rope_inverse_frequencies(5)
    with pytest.raises(ValueError, match="seq_len is required"):
        rope_inverse_frequencies(8, scaling=RopeScaling(kind="dynamic", factor=2.0, original_max_len=8))
    with pytest.raises(ValueError, match="dim must be >= 4"):
        rope_inverse_frequencies(2, scaling=RopeScaling(kind="ntk", factor=2.0))


@pytest.mark.parametrize("kwargs, field", [
    (dict(kind="yarn", factor=2.0), "kind"),
    (dict(kind="linear", factor=0.5), "factor"),
    (dict(kind="dynamic", factor=2.0), "original_max_len"),
    (dict(kind="ntk", factor=2.0, original_max_len=64), "original_max_len"),
])
def test_scaling_is_validated_when_built(kwargs, field):
    with pytest.raises(ValueError, match=f"RopeScaling.{field}"):
        RopeScaling(**kwargs)
