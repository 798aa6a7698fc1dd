"""The key/value cache: an explicit pytree that attention takes and returns.

Dimension key: L layers, B batch, S cache slots (max_len), K key/value heads, H head dim.

Slots are filled left to right; `length` counts the filled slots (the same for
every row of the batch). A model call with T new tokens writes their keys and
values at slots [length, length + T) and returns a cache with length + T. The
cache also keeps the position of the token in each slot, so position schemes that
compare query and key positions (ALiBi) see the positions the caller gave, and
whether the slot holds a real token, so padding (left padding of a batch of
prompts) is never attended to.

Keys and values are stored heads-major, [B, K, S, H]: the layout the attention
einsums contract in. `LayerKV.key_BSKH` / `value_BSKH` are the [B, S, K, H] views
that `layers.dot_product_attention` takes, and its own transpose back to
heads-major cancels them, so XLA moves nothing. (Stored as [B, S, K, H], the cache
was copied into heads-major in every layer at every decode step: a third of a
batch-8 step of a 6-layer GPT on CPU.)
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


def _swap_slots_and_heads(x):
    """[B, K, S, H] <-> [B, S, K, H]; also for the shape structs of `jax.eval_shape`."""
    if isinstance(x, jax.ShapeDtypeStruct):
        b, first, second, h = x.shape
        return jax.ShapeDtypeStruct((b, second, first, h), x.dtype)
    return x.transpose(0, 2, 1, 3)


@flax.struct.dataclass
class LayerKV:
    """Keys and values of one attention layer, stored heads-major: each [B, K, S, H]."""

    key_BKSH: jax.Array
    value_BKSH: jax.Array

    @classmethod
    def from_BSKH(cls, key_BSKH: jax.Array, value_BSKH: jax.Array) -> LayerKV:
        """From keys and values in the [B, S, K, H] layout of the attention inputs."""
        return cls(key_BKSH=_swap_slots_and_heads(key_BSKH),
                   value_BKSH=_swap_slots_and_heads(value_BSKH))

    @property
    def key_BSKH(self) -> jax.Array:
        """The keys as [B, S, K, H], the layout `layers.dot_product_attention` takes."""
        return _swap_slots_and_heads(self.key_BKSH)

    @property
    def value_BSKH(self) -> jax.Array:
        """The values as [B, S, K, H]."""
        return _swap_slots_and_heads(self.value_BKSH)


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
        return self.layers[0].key_BKSH.shape[2]

    @property
    def batch_size(self) -> int:
        return self.layers[0].key_BKSH.shape[0]


def init_kv_cache(
    *,
    num_layers: int,
    batch_size: int,
    max_len: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: jnp.dtype = jnp.float32,
) -> KVCache:
    """An empty cache of `max_len` slots per layer: keys and values [B, K, S, H] of zeros."""
    for name, value in (("num_layers", num_layers), ("batch_size", batch_size),
                        ("max_len", max_len), ("num_kv_heads", num_kv_heads),
                        ("head_dim", head_dim)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    shape = (batch_size, num_kv_heads, max_len, head_dim)
    layers = tuple(
        LayerKV(key_BKSH=jnp.zeros(shape, dtype), value_BKSH=jnp.zeros(shape, dtype))
        for _ in range(num_layers)
    )
    return KVCache(layers=layers, length=jnp.zeros((), jnp.int32),
                   positions_BS=jnp.zeros((batch_size, max_len), jnp.int32),
                   valid_BS=jnp.zeros((batch_size, max_len), jnp.bool_))


def write_kv(layer: LayerKV, start: jax.Array, key_BTKH: jax.Array,
             value_BTKH: jax.Array) -> LayerKV:
    """Writes T new keys/values, each [B, T, K, H], at slots [start, start + T)."""
    index = (0, 0, start, 0)
    new = LayerKV.from_BSKH(key_BTKH, value_BTKH)
    return LayerKV(
        key_BKSH=jax.lax.dynamic_update_slice(
            layer.key_BKSH, new.key_BKSH.astype(layer.key_BKSH.dtype), index),
        value_BKSH=jax.lax.dynamic_update_slice(
            layer.value_BKSH, new.value_BKSH.astype(layer.value_BKSH.dtype), index),
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
