"""flaxzoo's logit processors against transformers' reference processors, on random logits.

Each flaxzoo processor gets the logits a transformers `LogitsProcessor` gets (float32,
several rows, some with ties) and must return the same logits: the same entries at -inf,
the same values elsewhere. The composed sampling pipeline (repetition penalty, minimum
length, temperature, top-k, top-p, in transformers' order) must give the same
distribution. Where transformers builds a mask with its own floating-point rule (top-p's
cumulative sums), the logits are chosen with no token near the boundary, and the test
checks that margin.

Dimension key: B batch, T tokens so far (prompt and output), V vocab.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.decoding import (
    apply_temperature,
    repetition_penalty,
    seen_tokens,
    suppress_token,
    top_k_filter,
    top_p_filter,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.generation import logits_process as hf_lp  # noqa: E402

V = 50
B = 5


def _logits_BV(seed=0, *, ties=False):
    """float32 [B, V] logits; with `ties`, values on a coarse grid, so that many equal
    values occur (also at the top of each row)."""
    rng = np.random.default_rng(seed)
    logits_BV = rng.normal(scale=2.0, size=(B, V)).astype(np.float32)
    if ties:
        logits_BV = np.round(logits_BV * 2) / 2
        logits_BV[0, [3, 17, 41]] = logits_BV[0].max() + 1.0  # a three-way tie at the top
    logits_BV[1, 7] = 0.0  # an exact zero (repetition penalty: neither side of the rule)
    return logits_BV


def _tokens_BT(seed=0, length=12):
    """int [B, T] token ids with repeats in every row."""
    rng = np.random.default_rng(seed)
    tokens_BT = rng.integers(0, V, size=(B, length))
    tokens_BT[:, length // 2:] = tokens_BT[:, :length - length // 2]  # each id twice or more
    tokens_BT[1, :3] = 7  # the zero logit of `_logits_BV` is seen
    return tokens_BT


def _hf(processor, logits_BV, tokens_BT=None):
    if tokens_BT is None:
        tokens_BT = np.zeros((logits_BV.shape[0], 1), np.int64)
    with torch.no_grad():
        return processor(torch.tensor(tokens_BT), torch.tensor(logits_BV)).numpy()


def _assert_same_logits(ours_BV, ref_BV, *, rtol=1e-6):
    ours_BV = np.asarray(ours_BV)
    assert ours_BV.dtype == ref_BV.dtype == np.float32
    np.testing.assert_array_equal(np.isneginf(ours_BV), np.isneginf(ref_BV))
    kept_BV = np.isfinite(ref_BV)
    np.testing.assert_allclose(ours_BV[kept_BV], ref_BV[kept_BV], rtol=rtol, atol=0)


def _top_p_margin(logits_BV, p):
    """The smallest distance between p and the probability mass above any token (tokens
    ranked by logit, float64): the room either library's rounding has."""
    x_BV = np.sort(np.asarray(logits_BV, np.float64), axis=-1)[:, ::-1]
    x_BV = x_BV - x_BV[:, :1]
    probs_BV = np.exp(x_BV) / np.exp(x_BV).sum(axis=-1, keepdims=True)
    mass_above_BV = np.cumsum(probs_BV, axis=-1) - probs_BV
    return float(np.abs(mass_above_BV - p).min())


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_temperature_matches_transformers(temperature):
    logits_BV = _logits_BV(1)
    logits_BV[2, :10] = -np.inf  # already filtered entries stay filtered
    ref_BV = _hf(hf_lp.TemperatureLogitsWarper(temperature), logits_BV)
    _assert_same_logits(apply_temperature(jnp.asarray(logits_BV), temperature), ref_BV)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 5, V, V + 30])
def test_top_k_matches_transformers_ties_included(k, ties):
    logits_BV = _logits_BV(2, ties=ties)
    ref_BV = _hf(hf_lp.TopKLogitsWarper(k), logits_BV)
    if ties and k < V:  # both keep every logit equal to the k-th largest: more than k
        assert (np.isfinite(ref_BV).sum(axis=1) > k).any()
    _assert_same_logits(top_k_filter(jnp.asarray(logits_BV), k), ref_BV, rtol=0)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.6, 0.9, 0.99, 1.0])
def test_top_p_matches_transformers(p):
    logits_BV = _logits_BV(3)
    if p < 1.0:  # float32 cumulative sums over V tokens err by a few 1e-6 at most
        assert _top_p_margin(logits_BV, p) > 1e-5, "pick logits with no token at the boundary"
    ref_BV = _hf(hf_lp.TopPLogitsWarper(p), logits_BV)
    kept_B = np.isfinite(ref_BV).sum(axis=1)
    assert kept_B.min() >= 1 and (p == 1.0) == (kept_B == V).all()
    _assert_same_logits(top_p_filter(jnp.asarray(logits_BV), p), ref_BV, rtol=0)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers(penalty):
    logits_BV, tokens_BT = _logits_BV(4), _tokens_BT(4)
    ref_BV = _hf(hf_lp.RepetitionPenaltyLogitsProcessor(penalty), logits_BV, tokens_BT)
    seen_BV = seen_tokens(jnp.asarray(tokens_BT), V)
    ours_BV = repetition_penalty(jnp.asarray(logits_BV), seen_BV, penalty)
    assert not np.allclose(ref_BV, logits_BV)  # the penalty changed something
    _assert_same_logits(ours_BV, ref_BV)


@pytest.mark.parametrize("num_generated", [0, 1, 2, 3, 5])
def test_min_new_tokens_matches_transformers(num_generated):
    prompt_len, min_new, eos = 6, 3, 11
    logits_BV = _logits_BV(5)
    tokens_BT = _tokens_BT(5, length=prompt_len + num_generated)
    processor = hf_lp.MinNewTokensLengthLogitsProcessor(prompt_len, min_new, eos)
    ref_BV = _hf(processor, logits_BV, tokens_BT)
    ours_BV = suppress_token(jnp.asarray(logits_BV), eos,
                             jnp.full((B,), num_generated < min_new))
    assert np.isneginf(ref_BV[:, eos]).all() == (num_generated < min_new)
    _assert_same_logits(ours_BV, ref_BV, rtol=0)


@pytest.mark.parametrize("temperature, top_k, top_p, penalty", [
    (0.7, 10, 0.8, 1.3),
    (1.5, 25, 0.6, 0.7),
    (1.0, V, 0.95, 1.5),
])
def test_sampling_pipeline_matches_transformers(temperature, top_k, top_p, penalty):
    """transformers' sampling order (processors, then warpers): repetition penalty,
    minimum length, temperature, top-k, top-p; flaxzoo's `SamplingConfig` order too."""
    prompt_len, min_new, eos = 4, 3, 13
    logits_BV, tokens_BT = _logits_BV(6), _tokens_BT(6, length=prompt_len + 2)
    hf_processors = hf_lp.LogitsProcessorList([
        hf_lp.RepetitionPenaltyLogitsProcessor(penalty),
        hf_lp.MinNewTokensLengthLogitsProcessor(prompt_len, min_new, eos),
        hf_lp.TemperatureLogitsWarper(temperature),
        hf_lp.TopKLogitsWarper(top_k),
        hf_lp.TopPLogitsWarper(top_p),
    ])
    ref_BV = _hf(hf_processors, logits_BV, tokens_BT)

    x_BV = repetition_penalty(jnp.asarray(logits_BV), seen_tokens(jnp.asarray(tokens_BT), V),
                              penalty)
    x_BV = suppress_token(x_BV, eos, jnp.asarray(tokens_BT.shape[1] - prompt_len < min_new))
    x_BV = top_k_filter(apply_temperature(x_BV, temperature), top_k)
    assert _top_p_margin(np.asarray(x_BV), top_p) > 1e-5
    ours_BV = np.asarray(top_p_filter(x_BV, top_p))

    np.testing.assert_array_equal(np.isneginf(ours_BV), np.isneginf(ref_BV))
    assert np.isneginf(ref_BV[:, eos]).all()
    with torch.no_grad():
        ref_probs_BV = torch.softmax(torch.tensor(ref_BV), dim=-1).numpy()
    ours_probs_BV = np.asarray(jnp.exp(ours_BV - ours_BV.max(axis=-1, keepdims=True)))
    ours_probs_BV = ours_probs_BV / ours_probs_BV.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(ours_probs_BV, ref_probs_BV, rtol=1e-5, atol=1e-6)
