"""One training loop for every task: a `Task` says what the model, batches, loss and
evaluation are; `run_task` does the optimizer, jitted steps, progress, metrics and
checkpoint.

A task's `loss` is a pure function of (model, batch, rng) called
inside `jax.jit`; batches are pytrees of numpy arrays with static shapes, so the
step compiles once.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TextIO

import jax
import numpy as np
import optax
from flax import nnx

from flaxzoo.train import checkpoint as ckpt
from flaxzoo.train.loop import CHECKPOINT_DIR, METRICS_FILE, make_out_dir
from flaxzoo.train.progress import ProgressBar, append_metrics
from flaxzoo.train.steps import (
    OptimizerConfig,
    TrainState,
    init_train_state,
    learning_rate_schedule,
    make_optimizer,
)



class Task(Protocol):
    """What `run_task` needs to know about a task."""

    name: str
    model_config: Any  # has to_dict()
    tokenizer_json: str
    tokens_per_batch: int

    def init_model(self, rngs: nnx.Rngs) -> nnx.Module: ...
    def train_batch(self, step: int) -> Any: ...
    def loss(self, model: nnx.Module, batch: Any, rng: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]: ...
    def evaluate(self, model: nnx.Module) -> dict[str, float]: ...
    def describe(self) -> str: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskRunConfig:
    """Optimisation and bookkeeping shared by every task (the CLI maps flags onto it)."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    out_dir: str = "runs/task"
    eval_every: int = 0
    """Evaluate every this many steps as well as at the end (0: only at the end)."""
    overwrite: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        for name in ("warmup_steps", "eval_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0; got {self.learning_rate}")


def check_out_dir(run: TaskRunConfig) -> Path:
    """The output directory, refused if it holds a run and overwrite is off."""
    out = Path(run.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a directory")
    if ckpt.latest_step(out / CHECKPOINT_DIR) is not None and not run.overwrite:
        raise ValueError(f"{out} already holds a run; pass --overwrite to start over")
    return out


def run_task(task: Task, run: TaskRunConfig, *, log: TextIO = sys.stderr) -> dict[str, Any]:
    """Trains `task` for `run.steps` steps, evaluates, checkpoints; returns the final metrics."""
    out = check_out_dir(run)
    opt_config = OptimizerConfig(learning_rate=run.learning_rate, total_steps=run.steps,
                                 warmup_steps=run.warmup_steps, weight_decay=run.weight_decay)
    optimizer = make_optimizer(opt_config)
    schedule = learning_rate_schedule(opt_config)
    graphdef, state = init_train_state(task.init_model(nnx.Rngs(run.seed)), optimizer, run.seed)

    def train_step(state: TrainState, batch):
        rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))

        def loss_fn(params):
            return task.loss(nnx.merge(graphdef, params), batch, step_rng)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = TrainState(params=optax.apply_updates(state.params, updates),
                               opt_state=opt_state, step=state.step + 1,
                               rng=jax.random.key_data(rng))
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads),
                           "lr": schedule(state.step), **aux}

    train_step = jax.jit(train_step, donate_argnames="state")

    def evaluate(params) -> dict[str, float]:
        return task.evaluate(nnx.merge(graphdef, params))

    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log.write(f"task {task.name}: {num_params:,} parameters; {task.describe()}\n")
    make_out_dir(out, overwrite=run.overwrite)
    metrics_path = out / METRICS_FILE
    bar = ProgressBar(run.steps, stream=log)
    started = time.perf_counter()
    for step in range(run.steps):
        state, metrics = train_step(state, task.train_batch(step))
        if step == 0 or (step + 1) % 10 == 0 or step + 1 == run.steps:
            record = {"step": step + 1, **{k: float(v) for k, v in metrics.items()},
                      "elapsed_s": time.perf_counter() - started}
            append_metrics(metrics_path, record)
            bar.update(step + 1, loss=record["loss"],
                       tokens_per_s=(step + 1) * task.tokens_per_batch / record["elapsed_s"])
        if run.eval_every and (step + 1) % run.eval_every == 0 and step + 1 < run.steps:
            result = evaluate(state.params)
            append_metrics(metrics_path, {"step": step + 1, **{f"val_{k}": v
                                                              for k, v in result.items()}})
            bar.message(f"step {step + 1}: " + ", ".join(f"{k} {v:.4f}"
                                                         for k, v in result.items()))
    train_seconds = time.perf_counter() - started
    final = evaluate(state.params)
    append_metrics(metrics_path, {"step": run.steps, **{f"val_{k}": v for k, v in final.items()},
                                  "train_seconds": train_seconds})
    ckpt.save_checkpoint(out / CHECKPOINT_DIR, state, model_config=task.model_config.to_dict(),
                         tokenizer_json=task.tokenizer_json,
                         run_config={"task": task.name, **dataclasses.asdict(run)})
    return {**final, "train_seconds": train_seconds, "steps": run.steps,
            "checkpoint_dir": str(out / CHECKPOINT_DIR), "metrics_path": str(metrics_path)}


def sum_over_batches(sums_fn: Callable[[nnx.Module, Any], dict[str, jax.Array]],
                     model: nnx.Module, batches: Iterable[Any]) -> dict[str, float]:
    """Adds up `sums_fn(model, batch)` (a jitted function of arrays) over the batches."""
    totals: dict[str, float] = {}
    for batch in batches:
        for key, value in sums_fn(model, batch).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def json_line(result: dict[str, Any]) -> str:
    """The result as one JSON line (what the CLI prints last)."""
    return json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                       for k, v in result.items()})
