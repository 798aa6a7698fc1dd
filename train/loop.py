"""The training run: data -> model -> jitted steps -> metrics and checkpoints.

`train(RunConfig(...))` is what `flaxzoo train` calls; tests and notebooks call
it too.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxzoo.models import GPT, PRESETS, GPTConfig
from flaxzoo.train import checkpoint as ckpt
from flaxzoo.train.data import (eval_batches, load_shakespeare, read_text_file,
                                sample_batch, split_train_val)
from flaxzoo.train.progress import ProgressBar, append_metrics
from flaxzoo.train.steps import (Batch, OptimizerConfig, TrainState, init_train_state,
                                 learning_rate_schedule, make_eval_step, make_optimizer,
                                 make_train_step)
from flaxzoo.train.tokenizer import CharTokenizer

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One training run; `flaxzoo train` maps its flags onto these fields."""

    preset: str = "demo"
    """Model preset (GPTConfig.preset); its max_seq_len is set to seq_len."""
    data: str | None = None
    """A UTF-8 text file to train on; None means the shipped Shakespeare corpus."""
    steps: int = 1000
    """Total optimizer steps (a resumed run continues up to this number)."""
    batch_size: int = 32
    seq_len: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    dropout_rate: float | None = None
    """None keeps the preset's dropout rate."""
    out_dir: str = "runs/gpt"
    seed: int = 0
    val_fraction: float = 0.1
    eval_every: int = 250
    """Estimate validation loss every this many steps (on eval_batches batches); 0 = never."""
    eval_batches: int = 8
    checkpoint_every: int = 0
    """Save every this many steps; 0 = only at the end."""
    resume: bool = False
    """Continue from the checkpoint in out_dir."""
    overwrite: bool = False
    """Delete an existing run in out_dir first."""

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name in ("steps", "batch_size", "seq_len", "eval_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        for name in ("eval_every", "checkpoint_every", "warmup_steps", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number; got {self.learning_rate}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay}")
        if self.dropout_rate is not None and not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1); got {self.dropout_rate}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RunResult:
    step: int
    val_loss: float
    """Mean next-token cross-entropy over every validation token, in nats."""
    val_tokens: int
    train_seconds: float
    """Wall time of the training steps of this invocation (compilation included)."""
    tokens_per_second: float
    checkpoint_dir: Path
    metrics_path: Path


def evaluate(eval_step, params, token_ids: np.ndarray, *, batch_size: int, seq_len: int,
             max_batches: int | None = None) -> tuple[float, int]:
    """Mean loss over `token_ids` (every token unless max_batches caps it), and the count."""
    total, count = 0.0, 0.0
    for inputs, targets, weights in eval_batches(token_ids, batch_size=batch_size,
                                                 seq_len=seq_len, max_batches=max_batches):
        nll, n = eval_step(params, Batch(inputs_BT=jnp.asarray(inputs),
                                         targets_BT=jnp.asarray(targets),
                                         weights_BT=jnp.asarray(weights)))
        total += float(nll)
        count += float(n)
    return total / max(count, 1.0), int(count)


def _check_out_dir(config: RunConfig) -> tuple[Path, int | None]:
    """The output directory and, when resuming, the step to resume from."""
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a directory")
    existing = ckpt.latest_step(out / CHECKPOINT_DIR)
    if config.resume and existing is None:
        raise ValueError(f"cannot resume: no checkpoint in {out / CHECKPOINT_DIR}")
    if existing is not None and not config.resume:
        if not config.overwrite:
            raise ValueError(f"{out} already holds a run (checkpoint at step {existing}); "
                             f"pass --resume to continue it or --overwrite to start over")
    return out, existing if config.resume else None


def make_out_dir(out: Path, *, overwrite: bool) -> None:
    """Creates `out`, first removing the old run there when overwriting.

    Called only once every input has been checked, so a bad data file or
    setting never deletes a run or leaves an empty directory behind.
    """
    if overwrite and out.exists():
        for name in (CHECKPOINT_DIR, METRICS_FILE):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def train(config: RunConfig, *, log: TextIO = sys.stderr) -> RunResult:
    """Runs (or resumes) a training run and returns its final validation loss."""
    text = load_shakespeare() if config.data is None else read_text_file(config.data)
    out, resume_step = _check_out_dir(config)
    train_text, val_text = split_train_val(text, val_fraction=config.val_fraction)

    if resume_step is not None:
        meta = ckpt.load_metadata(out / CHECKPOINT_DIR, resume_step)
        tokenizer = CharTokenizer.from_json(meta.tokenizer_json)
        model_config = GPTConfig.from_dict(meta.model_config)
        if model_config.max_seq_len != config.seq_len:
            raise ValueError(f"seq_len {config.seq_len} differs from the checkpoint's "
                             f"{model_config.max_seq_len}")
    else:
        tokenizer = CharTokenizer.from_text(text)
        overrides = dict(vocab_size=tokenizer.vocab_size, max_seq_len=config.seq_len)
        if config.dropout_rate is not None:
            overrides["dropout_rate"] = config.dropout_rate
        model_config = GPTConfig.preset(config.preset, **overrides)

    train_ids = tokenizer.encode(train_text, unknown="replace")
    val_ids = tokenizer.encode(val_text, unknown="replace")
    for name, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) < config.seq_len + 1:
            raise ValueError(f"the {name} split has {len(ids)} characters, fewer than "
                             f"seq_len + 1 = {config.seq_len + 1}; use a longer data file "
                             f"or a smaller --seq-len")

    opt_config = OptimizerConfig(learning_rate=config.learning_rate, total_steps=config.steps,
                                 warmup_steps=config.warmup_steps,
                                 weight_decay=config.weight_decay)
    optimizer = make_optimizer(opt_config)
    make_out_dir(out, overwrite=config.overwrite)
    model = GPT(model_config, rngs=nnx.Rngs(config.seed))
    graphdef, state = init_train_state(model, optimizer, config.seed)
    if resume_step is not None:
        state = ckpt.restore_train_state(out / CHECKPOINT_DIR, state, resume_step)
    start = int(state.step)
    if start >= config.steps:
        raise ValueError(f"the checkpoint is already at step {start} >= steps {config.steps}")

    train_step = make_train_step(graphdef, optimizer, learning_rate_schedule(opt_config))
    eval_step = make_eval_step(graphdef)
    metrics_path = out / METRICS_FILE
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log.write(f"model: {config.preset} preset, {num_params:,} parameters, "
              f"vocabulary {tokenizer.vocab_size}, context {config.seq_len}; "
              f"data: {len(train_ids):,} training / {len(val_ids):,} validation characters\n")

    def save(state: TrainState) -> None:
        ckpt.save_checkpoint(out / CHECKPOINT_DIR, state, model_config=model_config.to_dict(),
                             tokenizer_json=tokenizer.to_json(), run_config=config.to_dict())

    bar = ProgressBar(config.steps, start=start, stream=log)
    tokens_per_step = config.batch_size * config.seq_len
    started = window_start = time.perf_counter()
    window_steps = 0
    for step in range(start, config.steps):
        inputs, targets = sample_batch(train_ids, step=step, batch_size=config.batch_size,
                                       seq_len=config.seq_len, seed=config.seed)
        batch = Batch(inputs_BT=jnp.asarray(inputs), targets_BT=jnp.asarray(targets),
                      weights_BT=jnp.ones(inputs.shape, jnp.float32))
        state, metrics = train_step(state, batch)
        window_steps += 1
        done = step + 1
        if done % 10 == 0 or done == config.steps:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            tokens_per_s = window_steps * tokens_per_step / (now - window_start)
            window_start, window_steps = now, 0
            append_metrics(metrics_path, {"step": done, **metrics,
                                          "tokens_per_s": round(tokens_per_s, 1),
                                          "elapsed_s": round(now - started, 3)})
            bar.update(done, loss=metrics["loss"], tokens_per_s=tokens_per_s)
        if config.eval_every and done % config.eval_every == 0 and done < config.steps:
            val_loss, _ = evaluate(eval_step, state.params, val_ids, batch_size=config.batch_size,
                                   seq_len=config.seq_len, max_batches=config.eval_batches)
            append_metrics(metrics_path, {"step": done, "val_loss_estimate": val_loss})
            bar.message(f"step {done}: validation loss estimate {val_loss:.4f}")
            window_start = time.perf_counter()
        if config.checkpoint_every and done % config.checkpoint_every == 0:
            save(state)
    train_seconds = time.perf_counter() - started

    # A periodic save may already have written the final step.
    if not (config.checkpoint_every and config.steps % config.checkpoint_every == 0):
        save(state)
    val_loss, val_tokens = evaluate(eval_step, state.params, val_ids,
                                    batch_size=config.batch_size, seq_len=config.seq_len)
    tokens_per_second = (config.steps - start) * tokens_per_step / train_seconds
    append_metrics(metrics_path, {"step": config.steps, "val_loss": val_loss,
                                  "val_tokens": val_tokens,
                                  "train_seconds": round(train_seconds, 2)})
    return RunResult(step=config.steps, val_loss=val_loss, val_tokens=val_tokens,
                     train_seconds=train_seconds, tokens_per_second=tokens_per_second,
                     checkpoint_dir=out / CHECKPOINT_DIR, metrics_path=metrics_path)
