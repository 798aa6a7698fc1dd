"""Rotary position embeddings (RoPE) applied at explicit integer positions.

Dimension key:
  B batch, T sequence length, N heads, H head dim,
  R rotated width (R <= H, even; R = H unless only part of each head rotates),
  P = R / 2 rotation planes (channel pairs).

RoPE turns each pair of channels (a, b) of a query or key into the point
(a, b) rotated by the angle  position * inv_freq[i], with
inv_freq[i] = base ** (-2i / R)  for i < R/2.  Because q and k are rotated by
their own positions, q . k depends on the positions only through k_pos - q_pos.

Two layouts pair the channels differently:
  "half"        channel i with channel i + R/2 (GPT-NeoX, Llama: `rotate_half`);
  "interleaved" channel 2i with channel 2i + 1 (GPT-J, the RoFormer paper).
Weights trained with one layout only work with that layout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_LAYOUTS = ("half", "interleaved")
_SCALING_KINDS = ("linear", "ntk", "dynamic")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """How to stretch RoPE to contexts longer than the model was trained on.

    Attributes:
      kind: one of
        "linear"  position interpolation: every angle is divided by `factor`
                  (equivalently inv_freq / factor);
        "ntk"     NTK-aware scaling: the base becomes
                  base * factor ** (R / (R - 2)), so the fastest channel is
                  untouched and the slowest is stretched by about `factor`;
        "dynamic" dynamic NTK: the "ntk" rule with an effective factor that grows
                  with the current sequence length L once L > original_max_len:
                  base * (factor * L / original_max_len - (factor - 1)) ** (R / (R - 2)).
                  For L <= original_max_len nothing changes.
      factor: the stretch, >= 1.
      original_max_len: the training context length; required by "dynamic" and
        rejected by the other kinds (they do not use it).
    """

    kind: str
    factor: float
    original_max_len: int | None = None

    def __post_init__(self):
        if self.kind not in _SCALING_KINDS:
            raise ValueError(f"RopeScaling.kind must be one of {_SCALING_KINDS}; got {self.kind!r}")
        if not self.factor >= 1.0:
            raise ValueError(f"RopeScaling.factor must be >= 1; got {self.factor}")
        if self.kind == "dynamic":
            if self.original_max_len is None or self.original_max_len < 1:
                raise ValueError(
                    "RopeScaling.original_max_len must be a positive int for kind='dynamic'; "
                    f"got {self.original_max_len}"
                )
        elif self.original_max_len is not None:
            raise ValueError(
                f"RopeScaling.original_max_len is only used by kind='dynamic'; got "
                f"original_max_len={self.original_max_len} with kind={self.kind!r}"
            )


def rope_inverse_frequencies(
    dim: int,
    *,
    base: float = 10_000.0,
    scaling: RopeScaling | None = None,
    seq_len: int | jax.Array | None = None,
) -> jax.Array:
    """Inverse frequencies of the R/2 rotation planes, inv_freq[i] = base ** (-2i / R).

    Args:
      dim: R, the number of rotated channels (the head dim, or the rotary dim
        when only part of each head rotates); positive and even.
      base: the 10000 of the RoPE paper (Llama 3 uses 500000).
      scaling: optional context-length scaling, see `RopeScaling`.
      seq_len: the current sequence length L, required by scaling kind
        "dynamic" and ignored otherwise. May be a traced scalar.

    Returns:
      float32 [P] = [R/2].
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be a positive even number; got {dim}")
    if base <= 0:
        raise ValueError(f"base must be > 0; got {base}")
    exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    if scaling is None:
        return 1.0 / (jnp.float32(base) ** exponents)
    if scaling.kind == "linear":
        return 1.0 / (jnp.float32(base) ** exponents) / jnp.float32(scaling.factor)
    if dim == 2:
        raise ValueError(
            f"dim must be >= 4 for scaling kind {scaling.kind!r} (its exponent is R/(R-2)); got 2"
        )
    power = dim / (dim - 2)
    if scaling.kind == "ntk":
        new_base = jnp.float32(base * scaling.factor**power)
    else:  # dynamic
        if seq_len is None:
            raise ValueError("seq_len is required with scaling kind 'dynamic'; got None")
        seq_len = jnp.asarray(seq_len)
        if seq_len.ndim != 0:
            raise ValueError(f"seq_len must be a scalar; got shape {seq_len.shape}")
        length = jnp.maximum(seq_len.astype(jnp.float32), jnp.float32(scaling.original_max_len))
        ratio = scaling.factor * length / scaling.original_max_len - (scaling.factor - 1.0)
        new_base = jnp.float32(base) * ratio**power
    return 1.0 / (new_base**exponents)


def apply_rope(
    x_BTNH: jax.Array,
    positions_BT: jax.Array,
    *,
    base: float = 10_000.0,
    layout: str = "half",
    scaling: RopeScaling | None = None,
    rotary_dim: int | None = None,
    seq_len: int | jax.Array | None = None,
) -> jax.Array:
    """Rotates queries or keys by their positions.

    Call it once on q and once on k with each one's own positions; with a KV
    cache, the new tokens' positions are simply offset by the cache length.

    Args:
      x_BTNH: queries or keys [B, T, N, H], any float dtype.
      positions_BT: integer positions [B, T], or [T] shared by the batch.
      base: the 10000 of the RoPE paper.
      layout: "half" pairs channel i with i + R/2 (GPT-NeoX, Llama);
        "interleaved" pairs channels 2i and 2i + 1 (GPT-J).
      scaling: optional context-length scaling, see `RopeScaling`.
      rotary_dim: R, rotate only the first R channels of each head and pass the
        rest through (GPT-J, GPT-NeoX "rotary_pct"); default H. Must be even.
      seq_len: the current sequence length for scaling kind "dynamic"; default
        max(positions) + 1 over the whole batch, as Hugging Face computes it.
        Pass the same value when rotating the queries and keys of one step.

    Returns:
      [B, T, N, H] in the dtype of `x_BTNH` (the rotation runs in float32).
    """
    x_BTNH = jnp.asarray(x_BTNH)
    positions_BT = jnp.asarray(positions_BT)
    if x_BTNH.ndim != 4:
        raise ValueError(f"x must have shape [batch, length, heads, head_dim]; got {x_BTNH.shape}")
    batch, length, _, head_dim = x_BTNH.shape
    if not jnp.issubdtype(positions_BT.dtype, jnp.integer):
        raise ValueError(f"positions must be integers; got dtype {positions_BT.dtype}")
    if positions_BT.shape not in ((batch, length), (length,)):
        raise ValueError(
            f"positions must have shape [batch, length] = {(batch, length)} or [length] = "
            f"{(length,)} to match x of shape {x_BTNH.shape}; got {positions_BT.shape}"
        )
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}; got {layout!r}")
    if rotary_dim is None:
        if head_dim % 2:
            raise ValueError(
                "the head dim of x must be even to be rotated in pairs; "
                f"got x of shape {x_BTNH.shape}"
            )
        rotary_dim = head_dim
    elif not (0 < rotary_dim <= head_dim and rotary_dim % 2 == 0):
        raise ValueError(
            f"rotary_dim must be even and in [2, head_dim={head_dim}]; got {rotary_dim}"
        )
    if scaling is not None and scaling.kind == "dynamic" and seq_len is None:
        seq_len = jnp.max(positions_BT) + 1

    inv_freq_P = rope_inverse_frequencies(rotary_dim, base=base, scaling=scaling, seq_len=seq_len)
    if positions_BT.ndim == 1:
        positions_BT = positions_BT[None, :]  # B = 1: one table for the whole batch
    angles_BTP = positions_BT.astype(jnp.float32)[:, :, None] * inv_freq_P
    cos_BT1P = jnp.cos(angles_BTP)[:, :, None, :]
    sin_BT1P = jnp.sin(angles_BTP)[:, :, None, :]

    # Each plane p rotates the pair (x1[p], x2[p]).
    x_BTNR = x_BTNH[..., :rotary_dim].astype(jnp.float32)
    if layout == "half":
        x1_BTNP, x2_BTNP = x_BTNR[..., : rotary_dim // 2], x_BTNR[..., rotary_dim // 2 :]
    else:
        x1_BTNP, x2_BTNP = x_BTNR[..., 0::2], x_BTNR[..., 1::2]
    y1_BTNP = x1_BTNP * cos_BT1P - x2_BTNP * sin_BT1P
    y2_BTNP = x2_BTNP * cos_BT1P + x1_BTNP * sin_BT1P
    if layout == "half":
        out_BTNR = jnp.concatenate([y1_BTNP, y2_BTNP], axis=-1)
    else:
        out_BTNR = jnp.stack([y1_BTNP, y2_BTNP], axis=-1).reshape(x_BTNR.shape)
    out_BTNR = out_BTNR.astype(x_BTNH.dtype)
    if rotary_dim == head_dim:
        return out_BTNR
    return jnp.concatenate([out_BTNR, x_BTNH[..., rotary_dim:]], axis=-1)
