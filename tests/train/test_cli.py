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
                        "--top-k", "0"], "--top-k must be >= 1")
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


def test_console_script_is_installed_and_exits_2_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("flaxzoo")
    assert script.exists(), "the flaxzoo console script is not installed"
    proc = subprocess.run([str(script), "train", "--steps", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("flaxzoo: error: --steps")
    assert "Traceback" not in proc.stderr
