"""Training runs end to end on the fixture text: metrics, checkpoints, exact resume."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxzoo.decoding import BeamSearchConfig, SamplingConfig
from flaxzoo.train import checkpoint as ckpt
from flaxzoo.train.generate import generate_text, load_model
from flaxzoo.train.loop import RunConfig, train

FIXTURE = Path(__file__).parents[1] / "fixtures" / "shakespeare_excerpt.txt"
TINY = dict(preset="tiny", data=str(FIXTURE), batch_size=4, seq_len=16, learning_rate=1e-2,
            warmup_steps=1, eval_every=2, eval_batches=2)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    result = train(RunConfig(**TINY, steps=4, out_dir=str(out)), log=open("/dev/null", "w"))
    return out, result


def test_run_writes_checkpoint_metrics_and_validation_loss(straight_run):
    out, result = straight_run
    assert result.step == 4 and np.isfinite(result.val_loss)
    # Character-level loss on 60-odd symbols starts near ln(V); 4 steps cannot be far below.
    assert 1.0 < result.val_loss < 5.0
    assert ckpt.latest_step(out / "checkpoint") == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [4]  # logged every 10 steps and at the end
    assert [r["step"] for r in records if "val_loss_estimate" in r] == [2]
    assert records[-1]["val_loss"] == pytest.approx(result.val_loss)
    meta = ckpt.load_metadata(out / "checkpoint")
    assert meta.step == 4 and meta.model_config["max_seq_len"] == 16
    assert meta.run_config["data"] == str(FIXTURE)


def test_resume_continues_exactly_from_the_saved_step(straight_run, tmp_path):
    straight_out, straight = straight_run
    quiet = open("/dev/null", "w")
    train(RunConfig(**TINY, steps=2, out_dir=str(tmp_path)), log=quiet)
    assert ckpt.latest_step(tmp_path / "checkpoint") == 2
    # The schedule is defined by the final step count, so the first leg must use
    # steps=4 too; resume with the same flags picks up at step 2.
    with pytest.raises(ValueError, match="already holds a run"):
        train(RunConfig(**TINY, steps=4, out_dir=str(tmp_path)), log=quiet)
    train(RunConfig(**TINY, steps=4, out_dir=str(tmp_path / "b")), log=quiet)
    interrupted = tmp_path / "c"
    train(RunConfig(**{**TINY, "eval_every": 0}, steps=4, checkpoint_every=2,
                    out_dir=str(interrupted)), log=quiet)
    # Roll back to step 2 by deleting the newer checkpoint, then resume.
    import shutil
    shutil.rmtree(interrupted / "checkpoint" / "4")
    resumed = train(RunConfig(**{**TINY, "eval_every": 0}, steps=4, checkpoint_every=2,
                              out_dir=str(interrupted), resume=True), log=quiet)
    straight_model = load_model(straight_out)
    resumed_model = load_model(interrupted)
    for a, b in zip(jax.tree.leaves(straight_model.params), jax.tree.leaves(resumed_model.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert resumed.val_loss == pytest.approx(straight.val_loss, rel=1e-6)


def test_resume_and_overwrite_errors(straight_run, tmp_path):
    quiet = open("/dev/null", "w")
    with pytest.raises(ValueError, match="no checkpoint"):
        train(RunConfig(**TINY, steps=2, out_dir=str(tmp_path), resume=True), log=quiet)
    with pytest.raises(ValueError, match="exclude each other"):
        RunConfig(resume=True, overwrite=True)
    out, _ = straight_run
    with pytest.raises(ValueError, match="already at step 4"):
        train(RunConfig(**TINY, steps=4, out_dir=str(out), resume=True), log=quiet)


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch_size", -1), ("seq_len", 0),
                                          ("learning_rate", -1.0), ("preset", "huge"),
                                          ("dropout_rate", 1.5)])
def test_run_config_validation(field, value):
    with pytest.raises(ValueError, match=field if field != "preset" else "unknown preset"):
        RunConfig(**{field: value})


def _text(model, prompts, **settings):
    config = SamplingConfig(**{"temperature": 0.0, **settings})
    return [hyps[0].text for hyps in generate_text(model, prompts, config, seed=1)]


def test_generate_from_checkpoint(straight_run):
    out, _ = straight_run
    model = load_model(out)
    assert model.family == "gpt" and model.eos_id is None
    [greedy] = _text(model, ["HAMLET:"], max_new_tokens=9)
    assert len(greedy) == 9 and [greedy] == _text(model, ["HAMLET:"], max_new_tokens=9)
    a = _text(model, ["HAMLET:"], max_new_tokens=9, temperature=1.0, top_k=5)
    assert a == _text(model, ["HAMLET:"], max_new_tokens=9, temperature=1.0, top_k=5)
    assert set(a[0]) <= set(model.tokenizer.chars)
    # A batch of prompts of different lengths: each row as if alone.
    batch = _text(model, ["HAMLET:", "HAM:", "O"], max_new_tokens=6)
    assert batch == [_text(model, [p], max_new_tokens=6)[0] for p in ["HAMLET:", "HAM:", "O"]]
    with pytest.raises(ValueError, match="prompt"):
        _text(model, ["HAMLET\u2603"], max_new_tokens=3)
    with pytest.raises(ValueError, match="context window of 16"):
        _text(model, ["HAMLET:"], max_new_tokens=11)
    _text(model, ["HAMLET:"], max_new_tokens=10)  # 7 + 10 - 1 = 16 slots: fits


def test_beam_search_from_checkpoint_returns_scored_n_best(straight_run):
    model = load_model(straight_run[0])
    config = BeamSearchConfig(max_new_tokens=5, beam_size=3, pad_id=model.pad_id)
    [hypotheses] = generate_text(model, ["HAMLET:"], config)
    assert len(hypotheses) == 3 and len({h.text for h in hypotheses}) == 3
    scores = [h.score for h in hypotheses]
    assert scores == sorted(scores, reverse=True)
    # No EOS in a character model: every hypothesis has 5 tokens; alpha 1 divides by 5.
    for h in hypotheses:
        assert len(h.text) == 5 and h.score == pytest.approx(h.log_prob / 5, rel=1e-6)
    # The best beam scores at least as well as the greedy continuation.
    [greedy] = _text(model, ["HAMLET:"], max_new_tokens=5)
    assert hypotheses[0].text == greedy or hypotheses[0].score >= _greedy_log_prob(
        model, "HAMLET:", greedy) / 5 - 1e-5


def _greedy_log_prob(model, prompt, continuation):
    """Summed log-probability of `continuation` after `prompt`, by one full forward pass."""
    ids = np.concatenate([model.tokenizer.encode(prompt), model.tokenizer.encode(continuation)])
    logits = model.model(ids[None], np.arange(len(ids))[None])[0][0]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    n = len(prompt)
    return float(sum(log_probs[n - 1 + i, ids[n + i]] for i in range(len(continuation))))


def test_corrupt_and_missing_checkpoints_raise_clear_errors(straight_run, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no checkpoint found"):
        load_model(tmp_path)
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(straight_run[0] / "checkpoint", broken)
    for f in (broken / "4" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_model(broken)
