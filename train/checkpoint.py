"""Checkpoints with orbax-checkpoint: parameters, optimizer state, step, config, tokenizer.

A checkpoint directory holds one numbered folder per saved step. Each step has
three items:
  params     the model's parameters (all `generate` needs),
  train      optimizer state, step and PRNG key (what resuming needs too),
  metadata   JSON: model config, tokenizer vocabulary, run settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from flaxzoo.train.steps import TrainState

FORMAT = "flaxzoo.checkpoint"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class CheckpointMetadata:
    """What travels with the parameters so a checkpoint is self-contained."""

    step: int
    model_config: dict[str, Any]
    tokenizer_json: str
    run_config: dict[str, Any]


def _abs(directory: str | os.PathLike[str]) -> Path:
    return Path(directory).expanduser().resolve()


def latest_step(directory: str | os.PathLike[str]) -> int | None:
    """The newest saved step in `directory`, or None if it holds no checkpoint."""
    path = _abs(directory)
    if not path.is_dir():
        return None
    with ocp.CheckpointManager(path) as manager:
        return manager.latest_step()


def save_checkpoint(
    directory: str | os.PathLike[str],
    state: TrainState,
    *,
    model_config: dict[str, Any],
    tokenizer_json: str,
    run_config: dict[str, Any],
    max_to_keep: int = 2,
) -> Path:
    """Saves `state` at step `state.step` and returns the step's folder."""
    step = int(state.step)
    metadata = {"format": FORMAT, "version": VERSION, "step": step,
                "model_config": model_config, "tokenizer": json.loads(tokenizer_json),
                "run_config": run_config}
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    with ocp.CheckpointManager(_abs(directory), options=options) as manager:
        manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(
                {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}),
            metadata=ocp.args.JsonSave(metadata),
        ), force=True)
        manager.wait_until_finished()
    return _abs(directory) / str(step)


def _step_or_error(directory: str | os.PathLike[str], step: int | None) -> int:
    path = _abs(directory)
    if not path.exists():
        raise ValueError(f"checkpoint directory {directory} does not exist")
    if not path.is_dir():
        raise ValueError(f"checkpoint path {directory} is not a directory")
    found = latest_step(path)
    if found is None:
        raise ValueError(f"no checkpoint found in {directory}")
    return found if step is None else step


def _restore(directory, step: int, **items) -> dict[str, Any]:
    try:
        with ocp.CheckpointManager(_abs(directory)) as manager:
            return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as err:  # orbax raises many types for unreadable files
        raise ValueError(
            f"cannot read checkpoint {directory} at step {step}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None


def load_metadata(directory: str | os.PathLike[str], step: int | None = None
                  ) -> CheckpointMetadata:
    """Reads the JSON metadata of the newest (or given) step."""
    step = _step_or_error(directory, step)
    raw = _restore(directory, step, metadata=ocp.args.JsonRestore())["metadata"]
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{directory} is not a flaxzoo checkpoint (metadata format "
                         f"{raw.get('format') if isinstance(raw, dict) else raw!r})")
    try:
        return CheckpointMetadata(step=int(raw["step"]), model_config=dict(raw["model_config"]),
                                  tokenizer_json=json.dumps(raw["tokenizer"]),
                                  run_config=dict(raw["run_config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata in {directory} is incomplete: {err}") from None


def restore_params(directory: str | os.PathLike[str], abstract_params: Any,
                   step: int | None = None) -> Any:
    """Restores only the parameters, shaped like `abstract_params`."""
    step = _step_or_error(directory, step)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)
    return _restore(directory, step, params=ocp.args.StandardRestore(target))["params"]


def restore_train_state(directory: str | os.PathLike[str], abstract_state: TrainState,
                        step: int | None = None) -> TrainState:
    """Restores the full train state, shaped like `abstract_state`."""
    step = _step_or_error(directory, step)
    to_struct = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    train_target = {"opt_state": abstract_state.opt_state, "step": abstract_state.step,
                    "rng": abstract_state.rng}
    restored = _restore(directory, step,
                        params=ocp.args.StandardRestore(to_struct(abstract_state.params)),
                        train=ocp.args.StandardRestore(to_struct(train_target)))
    train = restored["train"]
    return TrainState(params=restored["params"], opt_state=train["opt_state"],
                      step=train["step"], rng=train["rng"])
