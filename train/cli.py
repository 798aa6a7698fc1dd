"""The `flaxzoo` command line: `flaxzoo train`, `flaxzoo task` and `flaxzoo generate`.

Flags map one to one onto library calls (`train.loop.RunConfig`/`train`,
`train.tasks.TaskRunConfig`/`run_task` with a task, `train.generate.generate_text` with a
`decoding.SamplingConfig` or `decoding.BeamSearchConfig`). Bad input prints one line to
stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from flaxzoo.decoding import LENGTH_NORMALIZATIONS
from flaxzoo.models import PRESETS

TASKS = ("mlm", "genre", "pronounce")

EXIT_BAD_INPUT = 2


class _UsageError(Exception):
    pass


# Library errors name Python arguments; on the command line the user typed flags.
_FLAG_OF_ARGUMENT = {
    "preset": "--preset", "data": "--data", "steps": "--steps", "batch_size": "--batch-size",
    "seq_len": "--seq-len", "learning_rate": "--learning-rate", "warmup_steps": "--warmup-steps",
    "weight_decay": "--weight-decay", "dropout_rate": "--dropout", "out_dir": "--out",
    "seed": "--seed", "eval_every": "--eval-every", "checkpoint_every": "--checkpoint-every",
    "max_new_tokens": "--new-tokens", "temperature": "--temperature", "top_k": "--top-k",
    "vocab_size": "--vocab-size", "label_smoothing": "--label-smoothing",
    "init_from": "--init-from", "top_p": "--top-p", "repetition_penalty": "--repetition-penalty",
    "min_new_tokens": "--min-new-tokens", "beam_size": "--beams",
    "length_penalty": "--length-penalty", "length_normalization": "--length-norm",
}


def _in_flags(message: str) -> str:
    """The library's message with Python argument names written as their flags.

    Names with an underscore (`max_new_tokens`) cannot be English words and are
    replaced anywhere; plain words (`steps`, `data`) only where they open the
    message as its subject ("steps must be ...").
    """
    def flag(match: re.Match) -> str:
        return _FLAG_OF_ARGUMENT[match.group(1)]

    # Config errors name the field as `SamplingConfig.top_p`: the flag stands alone.
    message = re.sub(r"\b(?:SamplingConfig|BeamSearchConfig)\.", "", message)
    compound = [name for name in _FLAG_OF_ARGUMENT if "_" in name]
    message = re.sub(r"(?<![\w-])(" + "|".join(compound) + r")\b", flag, message)
    return re.sub(r"^(" + "|".join(_FLAG_OF_ARGUMENT) + r")\b(?= must)", flag, message)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: error: {message}")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flaxzoo", description="Train and sample flaxzoo transformer models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a GPT-shaped character model")
    train.add_argument("--preset", default="demo", help=f"model preset: {', '.join(PRESETS)}")
    train.add_argument("--data", default=None,
                       help="UTF-8 text file to train on (default: Shakespeare's plays, shipped)")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--seq-len", type=int, default=128,
                       help="training context length; also the model's max_seq_len")
    train.add_argument("--learning-rate", "--lr", type=float, default=2e-3)
    train.add_argument("--warmup-steps", type=int, default=100)
    train.add_argument("--weight-decay", type=float, default=0.1)
    train.add_argument("--dropout", type=float, default=None, help="override the preset's rate")
    train.add_argument("--out", default="runs/gpt", help="output directory for checkpoint and metrics")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-every", type=int, default=250)
    train.add_argument("--checkpoint-every", type=int, default=0)
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in --out")

    task = commands.add_parser("task", help="train a BERT or T5 task on real data")
    task.add_argument("task", choices=TASKS,
                      help="mlm: masked-LM BERT on Shakespeare; genre: which genre a passage "
                           "is from (held-out plays); pronounce: T5 spelling -> CMUdict phonemes")
    task.add_argument("--preset", default="small", help="tiny or small")
    task.add_argument("--steps", type=int, default=1000)
    task.add_argument("--batch-size", type=int, default=32)
    task.add_argument("--seq-len", type=int, default=128, help="tokens per passage (mlm, genre)")
    task.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary (mlm, genre)")
    task.add_argument("--learning-rate", "--lr", type=float, default=1e-3)
    task.add_argument("--warmup-steps", type=int, default=100)
    task.add_argument("--weight-decay", type=float, default=0.01)
    task.add_argument("--label-smoothing", type=float, default=0.1, help="pronounce only")
    task.add_argument("--init-from", default=None,
                      help="genre only: start the encoder from this mlm run's --out")
    task.add_argument("--out", default=None, help="output directory (default runs/<task>)")
    task.add_argument("--seed", type=int, default=0)
    task.add_argument("--eval-every", type=int, default=0)
    task.add_argument("--overwrite", action="store_true", help="replace the run in --out")

    gen = commands.add_parser(
        "generate", help="continue a prompt (GPT) or pronounce a word (T5) with a trained model")
    gen.add_argument("--checkpoint", required=True,
                     help="a run directory: the --out of `flaxzoo train` (GPT) or of "
                          "`flaxzoo task pronounce` (T5)")
    gen.add_argument("--prompt", required=True, action="append",
                     help="text to continue (GPT) or a word to pronounce (T5, lower-cased); "
                          "repeat the flag to decode several as one padded batch")
    gen.add_argument("--new-tokens", type=int, default=None,
                     help="tokens to generate (default: 200, or what fits the context window, "
                          "for a GPT; the model's length for a T5)")
    gen.add_argument("--temperature", type=float, default=None,
                     help="0 means greedy (default: 0.8 for a GPT, 0 for a T5)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely")
    gen.add_argument("--top-p", type=float, default=None,
                     help="nucleus sampling: the most likely tokens whose probability reaches p")
    gen.add_argument("--repetition-penalty", type=float, default=1.0,
                     help="> 1 discourages tokens already in the prompt or output (1: off)")
    gen.add_argument("--min-new-tokens", type=int, default=0,
                     help="no end-of-sequence before this many tokens (T5)")
    gen.add_argument("--beams", type=int, default=None,
                     help="beam search with this many beams instead of sampling")
    gen.add_argument("--length-penalty", type=float, default=None,
                     help="beam search: alpha of the length normalisation (default 1; 0 ranks "
                          "by raw log-probability)")
    gen.add_argument("--length-norm", choices=LENGTH_NORMALIZATIONS, default=None,
                     help="beam search: power (length**alpha, default) or gnmt "
                          "(((5 + length) / 6)**alpha)")
    gen.add_argument("--n-best", type=int, default=None,
                     help="beam search: how many hypotheses to print (default: all beams)")
    gen.add_argument("--seed", type=int, default=0)
    return parser


def _train(args) -> None:
    from flaxzoo.train.loop import RunConfig, train

    config = RunConfig(preset=args.preset, data=args.data, steps=args.steps,
                       batch_size=args.batch_size, seq_len=args.seq_len,
                       learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
                       weight_decay=args.weight_decay, dropout_rate=args.dropout,
                       out_dir=args.out, seed=args.seed, eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, resume=args.resume,
                       overwrite=args.overwrite)
    result = train(config)
    print(f"validation loss: {result.val_loss:.4f} nats per character "
          f"({result.val_tokens:,} characters) after {result.step} steps")
    print(f"training time: {result.train_seconds:.1f} s "
          f"({result.tokens_per_second / 1000:.1f}k characters/s)")
    print(f"checkpoint: {result.checkpoint_dir}")
    print(f"metrics: {result.metrics_path}")


def _task(args) -> None:
    from flaxzoo.train.tasks import (GenreTask, MaskedLMTask, PronunciationTask, TaskRunConfig,
                                     run_task)
    from flaxzoo.train.tasks.runner import check_out_dir, json_line

    if args.init_from is not None and args.task != "genre":
        raise _UsageError("flaxzoo: error: --init-from is only for the genre task")
    run = TaskRunConfig(steps=args.steps, batch_size=args.batch_size,
                        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
                        weight_decay=args.weight_decay, seed=args.seed,
                        out_dir=args.out or f"runs/{args.task}", eval_every=args.eval_every,
                        overwrite=args.overwrite)
    check_out_dir(run)  # before the task builds its tokenizer and data
    common = dict(preset=args.preset, batch_size=args.batch_size, seed=args.seed)
    if args.task == "mlm":
        task = MaskedLMTask(seq_len=args.seq_len, vocab_size=args.vocab_size, **common)
    elif args.task == "genre":
        task = GenreTask(seq_len=args.seq_len, vocab_size=args.vocab_size,
                         init_from=args.init_from, **common)
    else:
        task = PronunciationTask(label_smoothing=args.label_smoothing, **common)
    print(json_line(run_task(task, run)))


_SAMPLING_FLAGS = (("temperature", None), ("top_k", None), ("top_p", None),
                   ("repetition_penalty", 1.0))
_BEAM_FLAGS = (("length_penalty", None), ("length_norm", None), ("n_best", None))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _decode_config(args, loaded):
    """The decoding config the flags ask for, with the checkpoint's special ids."""
    from flaxzoo.decoding import BeamSearchConfig, SamplingConfig

    is_t5 = loaded.family == "t5"
    window = loaded.config.max_seq_len
    new_tokens = args.new_tokens
    if new_tokens is None:  # what fits, up to 200 (a T5 decodes up to its length)
        longest = max(len(p) for p in args.prompt)
        new_tokens = window if is_t5 else max(1, min(200, window - longest + 1))
    if args.min_new_tokens and loaded.eos_id is None:
        raise _UsageError("flaxzoo: error: --min-new-tokens needs an end-of-sequence token, "
                          "and this character model has none")
    common = dict(max_new_tokens=new_tokens, min_new_tokens=args.min_new_tokens,
                  eos_id=loaded.eos_id, pad_id=loaded.pad_id)
    if args.beams is not None:
        for name, default in _SAMPLING_FLAGS:
            if getattr(args, name) != default:
                raise _UsageError(f"flaxzoo: error: {_flag(name)} is for sampling; it does not "
                                  f"apply with --beams")
        if args.n_best is not None and not 1 <= args.n_best <= max(args.beams, 1):
            raise _UsageError(f"flaxzoo: error: --n-best must lie in [1, --beams]; "
                              f"got {args.n_best}")
        config = BeamSearchConfig(
            beam_size=args.beams,
            length_penalty=1.0 if args.length_penalty is None else args.length_penalty,
            length_normalization=args.length_norm or "power", **common)
    else:
        for name, default in _BEAM_FLAGS:
            if getattr(args, name) != default:
                raise _UsageError(f"flaxzoo: error: {_flag(name)} is for beam search; "
                                  f"add --beams")
        temperature = args.temperature
        if temperature is None:
            temperature = 0.0 if is_t5 else 0.8
        config = SamplingConfig(temperature=temperature, top_k=args.top_k, top_p=args.top_p,
                                repetition_penalty=args.repetition_penalty, **common)
    return config


def _generate(args) -> None:
    from flaxzoo.train.generate import generate_text, load_model

    loaded = load_model(args.checkpoint)
    config = _decode_config(args, loaded)
    prompts = [p.lower() for p in args.prompt] if loaded.family == "t5" else args.prompt
    results = generate_text(loaded, prompts, config, seed=args.seed)
    n_best = args.n_best
    for i, (prompt, hypotheses) in enumerate(zip(prompts, results)):
        if loaded.family == "t5":
            if args.beams is None:
                print(f"{prompt}\t{hypotheses[0].text}")
                continue
            print(prompt)
            for rank, h in enumerate(hypotheses[:n_best], 1):
                print(f"  {rank}. {h.text}\t(score {h.score:.4f}, log-prob {h.log_prob:.4f})")
            continue
        if len(prompts) > 1:
            print(f"--- prompt {i + 1} of {len(prompts)} ---")
        if args.beams is None:
            print(prompt + hypotheses[0].text)
            continue
        for rank, h in enumerate(hypotheses[:n_best], 1):
            print(f"--- beam {rank}: score {h.score:.4f}, log-prob {h.log_prob:.4f}, "
                  f"{len(h.token_ids)} tokens ---")
            print(prompt + h.text)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
        {"train": _train, "task": _task, "generate": _generate}[args.command](args)
    except _UsageError as err:
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as err:
        print(f"flaxzoo: error: {_in_flags(str(err))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("flaxzoo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
