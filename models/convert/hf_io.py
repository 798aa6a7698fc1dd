"""Reading and writing Hugging Face checkpoint directories, and moving arrays in and out
of NNX modules by path. Family converters (`convert.bert`, ...) build on these.

A Hugging Face directory holds `config.json` and the weights as `model.safetensors`
(read with the `safetensors` package) or `pytorch_model.bin` (a torch state dict,
read with torch when it is installed). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

# transformers' activation names (config.json "hidden_act" / "activation_function")
# and the flaxzoo.layers names they are.
ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "relu": "relu", "silu": "silu", "swish": "silu"}
ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
CONFIG_FILE = "config.json"


def read_hf_config(directory: str | os.PathLike[str]) -> dict:
    """The parsed config.json of a checkpoint directory."""
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(f"checkpoint directory {path} does not exist")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{path} has no {CONFIG_FILE}")
    try:
        return json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None


def read_hf_weights(directory: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as a numpy array, keyed by its Hugging Face name."""
    path = Path(directory)
    if (path / SAFETENSORS_FILE).is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(path / SAFETENSORS_FILE)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path / SAFETENSORS_FILE} is not a readable safetensors "
                             f"file: {err}") from None
    if (path / TORCH_FILE).is_file():
        try:
            import torch
        except ImportError:
            raise ValueError(f"{path / TORCH_FILE} is a torch state dict and torch is not "
                             f"installed; install torch or convert it to safetensors") from None
        try:
            state = torch.load(path / TORCH_FILE, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds for a corrupt file
            raise ValueError(f"{path / TORCH_FILE} is not a readable torch state dict: "
                             f"{err}") from None
        return {name: t.detach().float().numpy() if t.is_floating_point() else t.numpy()
                for name, t in state.items()}
    raise ValueError(f"{path} has neither {SAFETENSORS_FILE} nor {TORCH_FILE}")


def write_hf_checkpoint(directory: str | os.PathLike[str], config: Mapping,
                        weights: Mapping[str, np.ndarray]) -> Path:
    """Writes config.json and model.safetensors (float32, contiguous) to `directory`."""
    from safetensors.numpy import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    save_file({name: np.ascontiguousarray(value) for name, value in weights.items()},
              path / SAFETENSORS_FILE, metadata={"format": "pt"})
    return path


def _param(module: nnx.Module, path: str) -> nnx.Param:
    obj = module
    for part in path.split("/"):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    if not isinstance(obj, nnx.Param):
        raise ValueError(f"{path} is not a parameter of {type(module).__name__}")
    return obj


def assign_params(module: nnx.Module, values: Mapping[str, np.ndarray]) -> None:
    """Sets each parameter named by a '/'-path ("blocks/0/attn/query/kernel") in place.

    Every parameter of `module` must be assigned exactly once, with its own
    shape: a missing, extra or misshapen array raises ValueError naming it.
    """
    expected = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(module,
                                                                                     nnx.Param))}
    missing = sorted(expected - set(values))
    extra = sorted(set(values) - expected)
    if missing or extra:
        raise ValueError(f"parameters do not match {type(module).__name__}: missing "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{extra[:5]}{'...' if len(extra) > 5 else ''}")
    for path, value in values.items():
        param = _param(module, path)
        value = np.asarray(value)
        if value.shape != param.shape:
            raise ValueError(f"{path} needs shape {param.shape}; the checkpoint gives "
                             f"{value.shape}")
        param[...] = jnp.asarray(value, param[...].dtype)


def read_params(module: nnx.Module) -> dict[str, np.ndarray]:
    """Every parameter of `module` as numpy, keyed by its '/'-path."""
    return {"/".join(map(str, path)): np.asarray(value)
            for path, value in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def take(weights: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Removes and returns one tensor; a missing name is a clear error."""
    if name not in weights:
        raise ValueError(f"the checkpoint has no tensor {name!r}")
    return weights.pop(name)


def check_all_used(weights: Mapping[str, np.ndarray], ignorable: Iterable[str] = ()) -> None:
    """Raises if tensors the conversion did not use remain (beyond buffers that carry no
    weights, such as position_ids)."""
    left = sorted(name for name in weights if not any(name.endswith(s) for s in ignorable))
    if left:
        raise ValueError(f"the checkpoint has {len(left)} tensors this architecture does not "
                         f"use, e.g. {left[:5]}; is it a different architecture?")


def values_from_table(weights: dict[str, np.ndarray],
                      pairs: Iterable[tuple[str, str, bool]]) -> dict[str, np.ndarray]:
    """Takes each (Hugging Face name, flaxzoo path, transposed?) tensor out of `weights`."""
    values = {}
    for hf_name, path, transpose in pairs:
        value = take(weights, hf_name)
        values[path] = value.T if transpose else value
    return values


def weights_from_table(params: Mapping[str, np.ndarray],
                       pairs: Iterable[tuple[str, str, bool]]) -> dict[str, np.ndarray]:
    """The inverse of `values_from_table`: Hugging Face tensors from flaxzoo parameters."""
    return {hf_name: params[path].T if transpose else params[path]
            for hf_name, path, transpose in pairs}


def drop_tied_copy(weights: dict[str, np.ndarray], name: str, embedding: np.ndarray,
                   embedding_name: str) -> None:
    """Removes a tensor that must be a copy of the embedding (a tied output layer), and
    refuses one that is not."""
    copy = weights.pop(name, None)
    if copy is not None and not np.array_equal(copy, embedding):
        raise ValueError(f"{name} differs from {embedding_name}; untied output layers are not "
                         f"supported for this architecture or config")


def build_model(model_cls, config, values: Mapping[str, np.ndarray],
                left: Mapping[str, np.ndarray], ignorable: Iterable[str] = ()):
    """`model_cls(config)` holding `values`, once no unused tensor is `left`."""
    check_all_used(left, ignorable)
    model = model_cls(config, rngs=nnx.Rngs(0))
    assign_params(model, values)
    return model
