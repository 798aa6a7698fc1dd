"""Train state, optimizer, loss and the jit-compiled train/eval steps.

Dimension key: B batch, T sequence length, V vocabulary.

`train_step(state, batch) -> (state, metrics)` is a pure function of pytrees,
compiled once per batch shape; the model enters only through its NNX graphdef
(static) and its parameters (a pytree in the state).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training."""

    params: Any
    """The model's nnx.State of parameters."""
    opt_state: Any
    """optax state for `params`."""
    step: jax.Array
    """int32 scalar: optimizer steps taken."""
    rng: jax.Array
    """uint32 raw PRNG key data (raw so checkpoints can store it); dropout keys come from it."""


@flax.struct.dataclass
class Batch:
    """One batch of next-token prediction data."""

    inputs_BT: jax.Array
    targets_BT: jax.Array
    weights_BT: jax.Array
    """1.0 for real target tokens, 0.0 for padding."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """AdamW with linear warm-up, cosine decay and global-norm clipping."""

    learning_rate: float = 1e-3
    """Peak learning rate, reached after warm-up."""
    total_steps: int
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1
    """The cosine decays to learning_rate * final_lr_fraction at total_steps."""
    weight_decay: float = 0.1
    """Applied to matrices and embeddings only, not to biases or norm scales."""
    beta1: float = 0.9
    beta2: float = 0.99
    clip_norm: float = 1.0

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0; got {self.learning_rate}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; got {self.total_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0; got {self.warmup_steps}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1]; got {self.final_lr_fraction}")
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0; got {self.clip_norm}")


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    """0 -> peak linearly over warm-up, then cosine to peak * final_lr_fraction."""
    warmup = min(config.warmup_steps, config.total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=config.total_steps,
        end_value=config.learning_rate * config.final_lr_fraction,
    )


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(learning_rate_schedule(config), b1=config.beta1, b2=config.beta2,
                    weight_decay=config.weight_decay, mask=decay_mask),
    )


def init_train_state(model: nnx.Module, optimizer: optax.GradientTransformation,
                     seed: int) -> tuple[nnx.GraphDef, TrainState]:
    """Splits the model into (static graphdef, state with params and optimizer)."""
    graphdef, params = nnx.split(model, nnx.Param)
    state = TrainState(params=params, opt_state=optimizer.init(params),
                       step=jnp.zeros((), jnp.int32),
                       rng=jax.random.key_data(jax.random.key(seed)))
    return graphdef, state


def next_token_loss(logits_BTV: jax.Array, targets_BT: jax.Array,
                    weights_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy summed over real tokens, and their count.

    Returns (sum of -log p(target) * weight, sum of weights); their ratio is the
    mean over real (non-padding) tokens in nats.
    """
    log_probs_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    nll_BT = -jnp.take_along_axis(log_probs_BTV, targets_BT[..., None], axis=-1)[..., 0]
    weights_BT = weights_BT.astype(jnp.float32)
    return jnp.sum(nll_BT * weights_BT), jnp.sum(weights_BT)


def _positions(inputs_BT: jax.Array) -> jax.Array:
    B, T = inputs_BT.shape
    return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """A jitted `train_step(state, batch) -> (state, metrics)`; `state` is donated."""

    def train_step(state: TrainState, batch: Batch):
        rng, dropout_rng = jax.random.split(jax.random.wrap_key_data(state.rng))

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            logits, _ = model(batch.inputs_BT, _positions(batch.inputs_BT),
                              dropout_rng=dropout_rng)
            total, count = next_token_loss(logits, batch.targets_BT, batch.weights_BT)
            return total / jnp.maximum(count, 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = TrainState(params=optax.apply_updates(state.params, updates),
                               opt_state=opt_state, step=state.step + 1,
                               rng=jax.random.key_data(rng))
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return new_state, metrics

    return jax.jit(train_step, donate_argnames="state")


def make_eval_step(graphdef: nnx.GraphDef) -> Callable[[Any, Batch], tuple[jax.Array, jax.Array]]:
    """A jitted `eval_step(params, batch) -> (summed nll, token count)`, no dropout."""

    def eval_step(params, batch: Batch):
        model = nnx.merge(graphdef, params)
        logits, _ = model(batch.inputs_BT, _positions(batch.inputs_BT))
        return next_token_loss(logits, batch.targets_BT, batch.weights_BT)

    return jax.jit(eval_step)
