"""flaxzoo.train: data, tokenizer, jitted train/eval steps, checkpoints, the training run.

Public API (the `flaxzoo` command line calls the same functions):
    load_shakespeare(), load_plays(), read_text_file(path), split_train_val(text)
    sample_batch(token_ids, *, step, batch_size, seq_len, seed), eval_batches(...)
    CharTokenizer: character vocabulary with an explicit unknown-character policy
    SubwordTokenizer, train_byte_level_bpe: tokenizer.json WordPiece/BPE, trained BPE
    TrainState, Batch, OptimizerConfig, make_optimizer, learning_rate_schedule,
    init_train_state, next_token_loss, make_train_step, make_eval_step
    save_checkpoint, restore_train_state, restore_params, load_metadata, latest_step
    RunConfig, RunResult, train(config)
    load_model(directory), generate_text(model, prompt, ...)
"""

from flaxzoo.train.checkpoint import (CheckpointMetadata, latest_step, load_metadata,
                                      restore_params, restore_train_state, save_checkpoint)
from flaxzoo.train.data import (eval_batches, load_plays, load_shakespeare, read_text_file,
                                sample_batch, split_train_val)
from flaxzoo.train.generate import LoadedModel, generate_text, load_model
from flaxzoo.train.loop import RunConfig, RunResult, train
from flaxzoo.train.steps import (Batch, OptimizerConfig, TrainState, init_train_state,
                                 learning_rate_schedule, make_eval_step, make_optimizer,
                                 make_train_step, next_token_loss)
from flaxzoo.train.subword import SubwordTokenizer, train_byte_level_bpe
from flaxzoo.train.tokenizer import CharTokenizer

__all__ = [
    "Batch", "CharTokenizer", "CheckpointMetadata", "LoadedModel", "OptimizerConfig",
    "RunConfig", "RunResult", "TrainState", "eval_batches", "generate_text",
    "init_train_state", "latest_step", "learning_rate_schedule", "load_metadata",
    "load_model", "load_plays", "load_shakespeare", "make_eval_step", "make_optimizer",
    "make_train_step", "next_token_loss", "read_text_file", "restore_params",
    "restore_train_state", "sample_batch", "save_checkpoint", "split_train_val", "train",
    "SubwordTokenizer", "train_byte_level_bpe",
]
