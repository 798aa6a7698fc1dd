"""The key/value cache: an explicit pytree that attention takes and returns.

Dimension key: L layers, B batch, S cache slots (max_len), K key/value heads, H head dim.

Slots are filled left to right; `length` counts the filled slots (the same for
every row of the batch). A model call with T new tokens writes their keys and
values at slots [length, length + T) and returns a cache with length + T. The
cache also keeps the position of the token in each slot, so position schemes that
compare query and key positions (ALiBi) see the positions the caller gave, and
whether the slot holds a real token, so padding (left padding of a batch of
prompts) is never attended to.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class LayerKV:
    """Keys and values of one attention layer: each [B, S, K, H]."""

    key_BSKH: jax.Array
    value_BSKH: jax.Array


@flax.struct.dataclass
class KVCache:
    """Per-layer keys/values, the number of filled slots (int32 scalar), the
    position of the token in each slot (int32 [B, S]; 0 in empty slots) and whether
    it is a real token (bool [B, S]; False in empty slots and for padding)."""

    layers: tuple[LayerKV, ...]
    length: jax.Array
    positions_BS: jax.Array
    valid_BS: jax.Array

    @property
    def max_len(self) -> int:
        """S, the number of slots (static)."""
        return self.layers[0].key_BSKH.shape[1]

    @property
    def batch_size(self) -> int:
        return self.layers[0].key_BSKH.shape[0]


def init_kv_cache(
    *,
    num_layers: int,
    batch_size: int,
    max_len: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: jnp.dtype = jnp.float32,
) -> KVCache:
    """An empty cache of `max_len` slots per layer, each [B, S, K, H] of zeros."""
    for name, value in (("num_layers", num_layers), ("batch_size", batch_size),
                        ("max_len", max_len), ("num_kv_heads", num_kv_heads),
                        ("head_dim", head_dim)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    shape = (batch_size, max_len, num_kv_heads, head_dim)
    layers = tuple(
        LayerKV(key_BSKH=jnp.zeros(shape, dtype), value_BSKH=jnp.zeros(shape, dtype))
        for _ in range(num_layers)
    )
    return KVCache(layers=layers, length=jnp.zeros((), jnp.int32),
                   positions_BS=jnp.zeros((batch_size, max_len), jnp.int32),
                   valid_BS=jnp.zeros((batch_size, max_len), jnp.bool_))


def write_kv(layer: LayerKV, start: jax.Array, key_BTKH: jax.Array,
             value_BTKH: jax.Array) -> LayerKV:
    """Writes T new keys/values at slots [start, start + T)."""
    index = (0, start, 0, 0)
    return LayerKV(
        key_BSKH=jax.lax.dynamic_update_slice(
            layer.key_BSKH, key_BTKH.astype(layer.key_BSKH.dtype), index),
        value_BSKH=jax.lax.dynamic_update_slice(
            layer.value_BSKH, value_BTKH.astype(layer.value_BSKH.dtype), index),
    )


def write_slots(cache: KVCache, positions_BT: jax.Array,
                valid_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The cache's slot positions [B, S] and validity [B, S] with T new tokens written
    at slots [length, length + T)."""
    start = (0, cache.length)
    positions_BS = jax.lax.dynamic_update_slice(cache.positions_BS,
                                                positions_BT.astype(jnp.int32), start)
    valid_BS = jax.lax.dynamic_update_slice(cache.valid_BS, valid_BT.astype(jnp.bool_), start)
    return positions_BS, valid_BS
