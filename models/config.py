"""What every model config shares: presets by name, dict round trips, field checks.

Model configs are frozen, keyword-only dataclasses that inherit `ModelConfig` and
list their named sizes in `PRESET_NAMES` (each a classmethod of that name).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

_Config = TypeVar("_Config", bound="ModelConfig")


class ModelConfig:
    """Mixin for model config dataclasses: presets, dict round trips."""

    PRESET_NAMES: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def preset(cls: type[_Config], name: str, **overrides) -> _Config:
        """A named preset (one of PRESET_NAMES) with fields overridden."""
        if name not in cls.PRESET_NAMES:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(cls.PRESET_NAMES)}")
        return getattr(cls, name)(**overrides)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-able values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_Config], values: dict[str, Any]) -> _Config:
        """The inverse of `to_dict`; unknown fields are an error, missing ones take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**values)


def check_positive_ints(config: object, *names: str) -> None:
    """Raises ValueError naming `Config.field` unless each field is an int >= 1."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int; "
                             f"got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StackConfig(ModelConfig):
    """The sizes every transformer stack has; family configs add their own fields."""

    vocab_size: int
    """V, number of token ids."""
    max_seq_len: int
    """The context window: positions must lie in [0, max_seq_len) (the rows of a
    learned position table)."""
    num_layers: int
    """L, number of blocks."""
    num_heads: int
    """N, attention heads per block."""
    embed_dim: int
    """D, model width."""
    mlp_dim: int
    """F, feedforward hidden width."""
