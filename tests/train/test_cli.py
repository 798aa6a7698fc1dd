"""The flaxzoo command line: bad input is one line on stderr and exit status 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flaxzoo.train.cli import main
from flaxzoo.train.loop import RunConfig, train

FIXTURE = Path(__file__).parents[1] / "fixtures" / "shakespeare_excerpt.txt"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_run")
    train(RunConfig(preset="tiny", data=str(FIXTURE), steps=2, batch_size=2, seq_len=16,
                    eval_every=0, out_dir=str(out)), log=open(os.devnull, "w"))
    return out


def _bad_input(capsys, argv, match):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert match in lines[0], lines[0]


@pytest.mark.parametrize("argv, match", [
    (["train", "--data", "/definitely/missing.txt"], "does not exist"),
    (["train", "--preset", "huge"], "unknown preset 'huge'"),
    (["train", "--steps", "0"], "--steps must be a positive integer"),
    (["train", "--steps", "-3"], "--steps must be a positive integer"),
    (["train", "--steps", "many"], "invalid int value"),
    (["train", "--batch-size", "0"], "--batch-size must be"),
    (["frobnicate"], "invalid choice"),
    (["generate", "--prompt", "x"], "--checkpoint"),
])
def test_bad_train_input(capsys, tmp_path, argv, match):
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "out")]
    _bad_input(capsys, argv, match)
    assert not (tmp_path / "out").exists()  # not even an empty directory is left behind


def test_bad_data_with_overwrite_keeps_the_old_run(capsys, run_dir, tmp_path):
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    short = tmp_path / "short.txt"
    short.write_text("too short\n")
    _bad_input(capsys, ["train", "--data", str(short), "--preset", "tiny", "--seq-len", "16",
                        "--out", str(run_dir), "--overwrite"], "fewer than --seq-len + 1")
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_empty_and_non_utf8_data_files(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    _bad_input(capsys, ["train", "--data", str(empty), "--out", str(tmp_path / "o")], "empty")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    _bad_input(capsys, ["train", "--data", str(binary), "--out", str(tmp_path / "o")], "UTF-8")


def test_generate_bad_input(capsys, run_dir, tmp_path):
    _bad_input(capsys, ["generate", "--checkpoint", str(tmp_path / "none"), "--prompt", "A"],
               "does not exist")
    _bad_input(capsys, ["generate", "--checkpoint", str(tmp_path), "--prompt", "A"],
               "no checkpoint found")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "ROMEO\u00e9"],
               "prompt: character '\u00e9' at index 5 is not among the")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--new-tokens", "0"], "--new-tokens must be >= 1")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--top-k", "0"], "--top-k must be an int >= 1")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--top-p", "1.5"], "--top-p must be")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--repetition-penalty", "0"], "--repetition-penalty must be")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--beams", "0"], "--beams must be >= 1")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--beams", "2", "--top-k", "3"], "--top-k is for sampling")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--length-penalty", "0.6"], "--length-penalty is for beam search")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--beams", "2", "--n-best", "3"], "--n-best must lie in [1, --beams]")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--min-new-tokens", "2"], "--min-new-tokens needs an end-of-sequence")
    _bad_input(capsys, ["generate", "--checkpoint", str(run_dir), "--prompt", "A",
                        "--new-tokens", "100"], "context window")


def test_generate_prints_prompt_and_continuation(capsys, run_dir):
    argv = ["generate", "--checkpoint", str(run_dir), "--prompt", "BERNARDO:", "--new-tokens", "8",
            "--temperature", "0"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("BERNARDO:") and len(first.rstrip("\n")) > len("BERNARDO:")
    assert main(argv) == 0
    assert capsys.readouterr().out == first


def test_generate_every_strategy_from_the_command_line(capsys, run_dir):
    base = ["generate", "--checkpoint", str(run_dir), "--new-tokens", "6", "--prompt", "BERNARDO:"]
    for extra in (["--temperature", "0.7", "--top-k", "5", "--top-p", "0.9",
                   "--repetition-penalty", "1.3", "--seed", "3"],
                  ["--temperature", "0", "--repetition-penalty", "1.5"]):
        assert main(base + extra) == 0
        out = capsys.readouterr().out
        assert out.startswith("BERNARDO:") and len(out.rstrip("\n")) == len("BERNARDO:") + 6
    assert main(base + ["--beams", "3", "--length-penalty", "0.6", "--length-norm", "gnmt",
                        "--n-best", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.startswith("--- beam ") for line in lines] == [True, False, True, False]
    assert "score" in lines[0] and "6 tokens" in lines[0]
    # Two prompts decode as one padded batch; each as it would alone.
    assert main(base + ["--temperature", "0", "--prompt", "BER"]) == 0
    both = capsys.readouterr().out.splitlines()
    assert both[0] == "--- prompt 1 of 2 ---" and both[2] == "--- prompt 2 of 2 ---"
    assert main(["generate", "--checkpoint", str(run_dir), "--new-tokens", "6",
                 "--prompt", "BER", "--temperature", "0"]) == 0
    assert both[3] == capsys.readouterr().out.rstrip("\n")


@pytest.fixture(scope="module")
def pronounce_dir(tmp_path_factory):
    from flaxzoo.train.tasks import PronunciationTask, TaskRunConfig, run_task

    out = tmp_path_factory.mktemp("pronounce_run")
    task = PronunciationTask(preset="tiny", batch_size=8, eval_words=8)
    run_task(task, TaskRunConfig(steps=2, batch_size=8, out_dir=str(out)),
             log=open(os.devnull, "w"))
    return out


def test_generate_n_best_pronunciations_from_a_t5_checkpoint(capsys, pronounce_dir):
    from flaxzoo.train.generate import load_model

    vocab = load_model(pronounce_dir).tokenizer
    argv = ["generate", "--checkpoint", str(pronounce_dir), "--prompt", "Hello",
            "--new-tokens", "6"]
    assert main(argv) == 0
    word, phonemes = capsys.readouterr().out.rstrip("\n").split("\t")
    assert word == "hello" and set(phonemes.split()) <= set(vocab.symbols)
    assert main(argv + ["--beams", "3", "--prompt", "world"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "hello" and lines[4] == "world" and len(lines) == 8
    ranked = [line for line in lines if line.startswith("  ")]
    assert [line.split(".")[0].strip() for line in ranked] == ["1", "2", "3"] * 2
    scores = [float(line.split("(score ")[1].split(",")[0]) for line in ranked[:3]]
    assert scores == sorted(scores, reverse=True)
    _bad_input(capsys, argv[:-2] + ["--prompt", "h3llo"], "character '3' at index 1")
    _bad_input(capsys, argv[:-2] + ["--new-tokens", "99"], "context window")


def test_console_script_is_installed_and_exits_2_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("flaxzoo")
    assert script.exists(), "the flaxzoo console script is not installed"
    proc = subprocess.run([str(script), "train", "--steps", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("flaxzoo: error: --steps")
    assert "Traceback" not in proc.stderr
