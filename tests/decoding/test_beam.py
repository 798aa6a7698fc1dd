"""Beam search against exhaustive search in numpy, with hand-written step functions.

Dimension key: B batch, P prompt length, T tokens per step call, S cache length,
L new tokens, V vocab, W beams, M history buckets.

The step functions write every token into a cache at its position and read the
history back from it, so a cache that does not follow its hypothesis when beams are
reordered gives wrong logits.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.decoding import (
    BeamSearchConfig,
    BeamSearchOutput,
    BeamState,
    SamplingConfig,
    add_beam_dim,
    beam_search,
    gather_beams,
    generate,
    left_pad,
    length_penalty,
    make_generate_fn,
    sample,
)

M = 5
S = 10
EOS = 0


def _tables(seed, vocab):
    """float32 [S, V, V] (position, token) table and [M, V] history table."""
    rng = np.random.default_rng(seed)
    return (1.5 * rng.normal(size=(S, vocab, vocab))).astype(np.float32), rng.normal(
        size=(M, vocab)).astype(np.float32)


def history_step_fn(table_SVV, history_MV, *, eos_bias=0.0):
    """A step function whose logits depend on the position, the token, and (through
    the cache) the whole history: table[t, token_t] + history[sum_{s<t} (s+1) token_s % M].
    Padding (negative positions) is not written; `context` may hold `bias_BV` [B, V]
    (added) and `scale` (a scalar, multiplied)."""
    vocab = table_SVV.shape[-1]
    table_SVV, history_MV = jnp.asarray(table_SVV), jnp.asarray(history_MV)
    eos_V = eos_bias * jax.nn.one_hot(EOS, vocab)

    def step(tokens_BT, cache_BS, positions_BT, context):
        batch, cache_len = cache_BS.shape
        index_BT = jnp.where(positions_BT >= 0, positions_BT, cache_len)
        cache_BS = cache_BS.at[jnp.arange(batch)[:, None], index_BT].set(tokens_BT, mode="drop")
        s_S = jnp.arange(cache_len)
        before_BTS = s_S[None, None, :] < positions_BT[:, :, None]
        bucket_BT = jnp.where(before_BTS, (s_S + 1) * cache_BS[:, None, :], 0).sum(-1) % M
        logits_BTV = table_SVV[positions_BT, tokens_BT] + history_MV[bucket_BT] + eos_V
        if context is not None:
            logits_BTV = context["scale"] * (logits_BTV + context["bias_BV"][:, None, :])
        return logits_BTV, cache_BS

    return step


# Numpy references.


def _np_logits(table_SVV, history_MV, sequence, *, eos_bias=0.0, bias_V=None, scale=1.0):
    """Next-token logits after `sequence` (a row's real tokens, prompt first)."""
    t = len(sequence) - 1
    bucket = sum((s + 1) * token for s, token in enumerate(sequence[:-1])) % M
    logits_V = table_SVV[t, sequence[-1]].astype(np.float64) + history_MV[bucket]
    logits_V[EOS] += eos_bias
    if bias_V is not None:
        logits_V = scale * (logits_V + bias_V)
    return logits_V


def _np_log_softmax(x_V):
    x_V = x_V - x_V.max()
    return x_V - np.log(np.exp(x_V).sum())


def _np_penalty(length, alpha, normalization):
    return length**alpha if normalization == "power" else ((5.0 + length) / 6.0) ** alpha


def _np_nbest(logits_fn, prompt, config):
    """Exhaustive search: every hypothesis (EOS-terminated, or max_new_tokens long)
    with its score, log-probability and length, best first."""
    hypotheses = []

    def extend(sequence, new, log_prob):
        log_probs_V = _np_log_softmax(logits_fn(sequence))
        for token, token_log_prob in enumerate(log_probs_V):
            if token == config.eos_id and len(new) < config.min_new_tokens:
                continue  # Held back: this hypothesis cannot occur.
            new_ = new + [token]
            if token == config.eos_id or len(new_) == config.max_new_tokens:
                hypotheses.append((new_, log_prob + token_log_prob))
            else:
                extend(sequence + [token], new_, log_prob + token_log_prob)

    extend(list(prompt), [], 0.0)
    scored = [(lp / _np_penalty(len(t), config.length_penalty, config.length_normalization),
               lp, len(t), t + [config.pad_id] * (config.max_new_tokens - len(t)))
              for t, lp in hypotheses]
    scored.sort(key=lambda h: -h[0])
    return scored


def _np_log_prob(logits_fn, prompt, tokens):
    sequence, total = list(prompt), 0.0
    for token in tokens:
        total += _np_log_softmax(logits_fn(sequence))[token]
        sequence.append(token)
    return total


def _assert_nbest(out, b, reference):
    """Row b of `out` is exactly the reference n-best list, -inf after it."""
    n = len(reference)
    scores_W = np.asarray(out.scores_BW[b])
    log_probs_W = np.asarray(out.log_probs_BW[b])
    ref_scores = np.array([h[0] for h in reference])
    assert n <= scores_W.size
    assert (np.diff(ref_scores) < -1e-4).all(), "reference has near ties; change the seed"
    np.testing.assert_allclose(scores_W[:n], ref_scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(log_probs_W[:n], [h[1] for h in reference], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.lengths_BW[b])[:n], [h[2] for h in reference])
    np.testing.assert_array_equal(np.asarray(out.tokens_BWL[b])[:n], [h[3] for h in reference])
    assert (scores_W[n:] == -np.inf).all() and (log_probs_W[n:] == -np.inf).all()


def _jit_beam(step_fn, config):
    return jax.jit(functools.partial(beam_search, step_fn, config=config))


def _cache(batch):
    return jnp.full((batch, S), 7, jnp.int32)


# Exhaustive search: V = 3, L = 3, so 27 beams hold every hypothesis.

V3 = 3
TABLE3_SVV, HISTORY3_MV = _tables(0, V3)
STEP3 = history_step_fn(TABLE3_SVV, HISTORY3_MV)
_PROMPTS3 = [[1, 2, 1], [2], [0, 2]]
_PROMPT3_BP, _VALID3_BP = left_pad(_PROMPTS3, pad_id=2)


def _logits3(sequence):
    return _np_logits(TABLE3_SVV, HISTORY3_MV, sequence)


@pytest.mark.parametrize(
    "normalization, alpha",
    [("power", 0.0), ("power", 1.0), ("power", 2.0), ("power", -0.5),
     ("gnmt", 0.6), ("gnmt", 2.0), ("gnmt", -0.5)],
)
def test_wide_beam_equals_exhaustive_search(normalization, alpha):
    config = BeamSearchConfig(max_new_tokens=3, beam_size=27, eos_id=EOS, pad_id=1,
                              length_penalty=alpha, length_normalization=normalization)
    out = _jit_beam(STEP3, config)(_PROMPT3_BP, _cache(3), prompt_valid_BP=_VALID3_BP)
    assert isinstance(out, BeamSearchOutput)
    assert out.tokens_BWL.shape == (3, 27, 3) and out.tokens_BWL.dtype == jnp.int32
    assert out.scores_BW.dtype == out.log_probs_BW.dtype == jnp.float32
    assert out.lengths_BW.dtype == jnp.int32
    for b, prompt in enumerate(_PROMPTS3):
        reference = _np_nbest(_logits3, prompt, config)
        assert len(reference) == 1 + 2 + 12  # EOS first, EOS second, or three tokens.
        _assert_nbest(out, b, reference)


def test_length_normalisation_changes_the_ranking():
    # Guards the test above: the settings give different n-best lists.
    bests = set()
    for normalization, alpha in [("power", 0.0), ("power", 2.0), ("power", -0.5),
                                 ("gnmt", 2.0)]:
        config = BeamSearchConfig(max_new_tokens=3, beam_size=27, eos_id=EOS,
                                  length_penalty=alpha, length_normalization=normalization)
        reference = _np_nbest(_logits3, _PROMPTS3[0], config)
        bests.add(tuple(tuple(h[3]) for h in reference))
    assert len(bests) == 4


def test_wide_beam_without_eos_is_every_sequence():
    config = BeamSearchConfig(max_new_tokens=3, beam_size=27, length_penalty=1.0)
    out = _jit_beam(STEP3, config)(_PROMPT3_BP, _cache(3), prompt_valid_BP=_VALID3_BP)
    for b, prompt in enumerate(_PROMPTS3):
        reference = _np_nbest(_logits3, prompt, config)
        assert len(reference) == 27
        _assert_nbest(out, b, reference)
    # Every one of the 27 sequences, once.
    assert {tuple(t) for t in np.asarray(out.tokens_BWL[0])} == set(
        itertools.product(range(V3), repeat=3))


def test_wide_beam_with_min_new_tokens_equals_exhaustive_search():
    config = BeamSearchConfig(max_new_tokens=3, beam_size=27, eos_id=EOS, pad_id=2,
                              min_new_tokens=2, length_penalty=0.6,
                              length_normalization="gnmt")
    out = _jit_beam(STEP3, config)(_PROMPT3_BP, _cache(3), prompt_valid_BP=_VALID3_BP)
    for b, prompt in enumerate(_PROMPTS3):
        reference = _np_nbest(_logits3, prompt, config)
        assert len(reference) == 2 * 2 * 3  # No EOS among the first two tokens.
        _assert_nbest(out, b, reference)


def test_wide_beam_equals_exhaustive_search_four_steps():
    # 31 hypotheses and at most 24 candidates per step: 31 beams are exhaustive; four
    # steps reorder the cache three times.
    config = BeamSearchConfig(max_new_tokens=4, beam_size=31, eos_id=EOS, pad_id=1,
                              length_penalty=1.0)
    out = _jit_beam(STEP3, config)(_PROMPT3_BP, _cache(3), prompt_valid_BP=_VALID3_BP)
    for b, prompt in enumerate(_PROMPTS3):
        reference = _np_nbest(_logits3, prompt, config)
        assert len(reference) == 31
        _assert_nbest(out, b, reference)


def test_context_is_tiled_with_the_beams():
    # The same prompt in every row, a different bias per row: each row must see its own
    # bias in every beam; the scalar scale is shared.
    bias_BV = jnp.array([[0.0, 0.0, 0.0], [2.0, -1.0, 0.0], [-1.0, 0.5, 1.5]], jnp.float32)
    context = {"bias_BV": bias_BV, "scale": jnp.float32(0.7)}
    config = BeamSearchConfig(max_new_tokens=3, beam_size=27, eos_id=EOS, pad_id=1,
                              length_penalty=1.0)
    prompt_BP = jnp.array([[1, 2]] * 3, jnp.int32)
    out = _jit_beam(STEP3, config)(prompt_BP, _cache(3), context=context)
    for b in range(3):
        logits_fn = functools.partial(_np_logits, TABLE3_SVV, HISTORY3_MV,
                                      bias_V=np.asarray(bias_BV[b], np.float64), scale=0.7)
        _assert_nbest(out, b, _np_nbest(logits_fn, [1, 2], config))


# Narrower beams: V = 6, L = 6.

V6 = 6
TABLE6_SVV, HISTORY6_MV = _tables(1, V6)
STEP6 = history_step_fn(TABLE6_SVV, HISTORY6_MV, eos_bias=-0.5)
_PROMPTS6 = [[3, 1, 4, 1], [5], [2, 2], [4, 3, 5]]
_PROMPT6_BP, _VALID6_BP = left_pad(_PROMPTS6, pad_id=0)


def test_beam_size_one_is_greedy():
    for eos_id, alpha in [(None, 1.0), (EOS, 0.0)]:
        greedy_config = SamplingConfig(max_new_tokens=6, temperature=0.0, eos_id=eos_id,
                                       pad_id=2)
        greedy_out = jax.jit(functools.partial(sample, STEP6, config=greedy_config))(
            _PROMPT6_BP, _cache(4), prompt_valid_BP=_VALID6_BP)
        config = BeamSearchConfig(max_new_tokens=6, beam_size=1, eos_id=eos_id, pad_id=2,
                                  length_penalty=alpha)
        out = _jit_beam(STEP6, config)(_PROMPT6_BP, _cache(4), prompt_valid_BP=_VALID6_BP)
        np.testing.assert_array_equal(out.tokens_BWL[:, 0], greedy_out.tokens_BL)
        np.testing.assert_array_equal(out.lengths_BW[:, 0], greedy_out.lengths_B)
        if eos_id is not None:  # Some rows stop at EOS, some do not.
            assert len(set(np.asarray(greedy_out.lengths_B).tolist()) - {6}) > 0
            assert 6 in np.asarray(greedy_out.lengths_B)


def test_batched_left_padded_prompts_equal_solo_runs():
    config = BeamSearchConfig(max_new_tokens=6, beam_size=3, eos_id=EOS, pad_id=2,
                              length_penalty=0.6, min_new_tokens=1)
    search = _jit_beam(STEP6, config)
    out = search(_PROMPT6_BP, _cache(4), prompt_valid_BP=_VALID6_BP)
    for b in (0, 1, 2):  # Prompt lengths 4, 1, 2.
        solo = search(jnp.array([_PROMPTS6[b]], jnp.int32), _cache(1))
        np.testing.assert_array_equal(solo.tokens_BWL[0], out.tokens_BWL[b])
        np.testing.assert_array_equal(solo.lengths_BW[0], out.lengths_BW[b])
        np.testing.assert_allclose(solo.scores_BW[0], out.scores_BW[b], rtol=1e-6)
        np.testing.assert_allclose(solo.log_probs_BW[0], out.log_probs_BW[b], rtol=1e-6)


def _np_beam_search(logits_fn, prompt, config, vocab):
    """Beam search in numpy without any stopping rule: each step extends every live
    hypothesis by every token, keeps the 2 W best candidates, lets those among the
    first W that end in EOS (all of them at the last step) into the pool of W finished
    ones, and keeps the W best others live. Stopping early must not change this."""
    beams, max_new, eos = config.beam_size, config.max_new_tokens, config.eos_id
    live, finished = [([], 0.0)], []
    for length in range(1, max_new + 1):
        candidates = []
        for tokens, log_prob in live:
            log_probs_V = _np_log_softmax(logits_fn(list(prompt) + tokens))
            if length <= config.min_new_tokens:
                log_probs_V[eos] = -np.inf
            candidates += [(log_prob + log_probs_V[v], tokens + [v]) for v in range(vocab)]
        candidates = sorted(candidates, key=lambda c: -c[0])[:2 * beams]
        live = []
        for rank, (log_prob, tokens) in enumerate(candidates):
            if tokens[-1] == eos or length == max_new:
                if rank < beams and log_prob > -np.inf:
                    score = log_prob / _np_penalty(length, config.length_penalty,
                                                   config.length_normalization)
                    finished.append((score, log_prob, length,
                                     tokens + [config.pad_id] * (max_new - length)))
            elif len(live) < beams:
                live.append((tokens, log_prob))
        finished = sorted(finished, key=lambda h: -h[0])[:beams]
    return finished


@pytest.mark.parametrize(
    "normalization, alpha, eos_bias, early_exit",
    [("power", 0.0, 2.5, True), ("power", 1.0, 3.5, False), ("power", 2.0, 0.5, True),
     ("power", -0.5, 2.5, False), ("gnmt", 1.0, 2.5, True)],
)
def test_narrow_beam_equals_numpy_beam_search(normalization, alpha, eos_bias, early_exit):
    # With a likely EOS the pool of 3 fills early with short hypotheses; for alpha > 0
    # longer ones found later still enter it, so a row stopped too early differs.
    eos, pad, m, max_new = EOS, 5, 1, 6
    config = BeamSearchConfig(max_new_tokens=max_new, beam_size=3, eos_id=eos, pad_id=pad,
                              min_new_tokens=m, length_penalty=alpha,
                              length_normalization=normalization, early_exit=early_exit)
    step = history_step_fn(TABLE6_SVV, HISTORY6_MV, eos_bias=eos_bias)
    out = _jit_beam(step, config)(_PROMPT6_BP, _cache(4), prompt_valid_BP=_VALID6_BP)
    logits_fn = functools.partial(_np_logits, TABLE6_SVV, HISTORY6_MV, eos_bias=eos_bias)
    for b, prompt in enumerate(_PROMPTS6):
        _assert_nbest(out, b, _np_beam_search(logits_fn, prompt, config, V6))
    # Properties of any answer: sorted best first, scores = log_probs / penalty(lengths),
    # EOS only last and not before min_new_tokens, pad after it, log-probabilities summed
    # along the hypothesis.
    tokens_BWL, lengths_BW = np.asarray(out.tokens_BWL), np.asarray(out.lengths_BW)
    scores_BW, log_probs_BW = np.asarray(out.scores_BW), np.asarray(out.log_probs_BW)
    assert np.isfinite(scores_BW).all() and (np.diff(scores_BW, axis=1) <= 0).all()
    np.testing.assert_allclose(
        scores_BW, log_probs_BW / _np_penalty(lengths_BW, alpha, normalization), rtol=1e-6)
    eos_ended = 0
    for b, prompt in enumerate(_PROMPTS6):
        assert len({tuple(t) for t in tokens_BWL[b]}) == 3  # Distinct hypotheses.
        for tokens_L, length, log_prob in zip(tokens_BWL[b], lengths_BW[b], log_probs_BW[b]):
            assert eos not in tokens_L[:length - 1]
            if tokens_L[length - 1] == eos:
                assert length >= m + 1
                eos_ended += 1
            else:
                assert length == max_new
            assert (tokens_L[length:] == pad).all()
            np.testing.assert_allclose(
                log_prob, _np_log_prob(logits_fn, prompt, tokens_L[:length]), atol=1e-5)
    assert eos_ended > 0


def _counting(step_fn, calls):
    def count(_):
        calls.append(1)

    def counting_step(tokens_BT, cache, positions_BT, context):
        jax.debug.callback(count, positions_BT)
        return step_fn(tokens_BT, cache, positions_BT, context)

    return counting_step


def test_early_exit_gives_identical_outputs():
    # EOS is likely, so rows finish at different times and all before the end.
    step = history_step_fn(TABLE6_SVV, HISTORY6_MV, eos_bias=2.0)
    outs, calls = [], []
    for early_exit in (False, True):
        calls.append([])
        config = BeamSearchConfig(max_new_tokens=6, beam_size=3, eos_id=EOS, pad_id=2,
                                  length_penalty=0.0, early_exit=early_exit)
        outs.append(_jit_beam(_counting(step, calls[-1]), config)(
            _PROMPT6_BP, _cache(4), prompt_valid_BP=_VALID6_BP))
    jax.effects_barrier()
    for name in ("tokens_BWL", "lengths_BW", "scores_BW", "log_probs_BW"):
        np.testing.assert_array_equal(getattr(outs[0], name), getattr(outs[1], name),
                                      err_msg=name)
    assert len(set(np.asarray(outs[0].lengths_BW).ravel().tolist())) > 2
    # Prefill and 5 steps; with early exit, fewer.
    assert len(calls[0]) == 6 and len(calls[1]) < 6


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_make_generate_fn_traces_once_per_shape():
    traced_shapes = []

    def counting_step(tokens_BT, cache, positions_BT, context):
        traced_shapes.append(tokens_BT.shape)  # Runs only while tracing.
        return STEP6(tokens_BT, cache, positions_BT, context)

    config = BeamSearchConfig(max_new_tokens=4, beam_size=3, eos_id=EOS)
    generate_fn = make_generate_fn(counting_step, config)
    # The cache is donated: a fresh one for every call.
    a = generate_fn(_PROMPT6_BP, _cache(4), prompt_valid_BP=_VALID6_BP)
    b = generate_fn(_PROMPT6_BP[::-1], _cache(4), prompt_valid_BP=_VALID6_BP[::-1])
    assert traced_shapes == [(4, 4), (12, 1)]  # Prefill at B, then steps at B * W.
    np.testing.assert_array_equal(a.tokens_BWL[::-1], b.tokens_BWL)
    generate_fn(_PROMPT6_BP[:2], _cache(2), prompt_valid_BP=_VALID6_BP[:2])
    assert traced_shapes == [(4, 4), (12, 1), (2, 4), (6, 1)]
    # generate dispatches on the config type (shapes only: no second compilation).
    c = jax.eval_shape(functools.partial(generate, STEP6, config=config), _PROMPT6_BP,
                       _cache(4), prompt_valid_BP=_VALID6_BP)
    assert isinstance(c, BeamSearchOutput) and c.tokens_BWL.shape == (4, 3, 4)


# Helpers.


def test_add_beam_dim_and_gather_beams_match_numpy():
    x_BD = np.arange(12).reshape(3, 4)
    tree = {"x": jnp.asarray(x_BD), "shared": jnp.float32(2.0), "none": None}
    tiled = add_beam_dim(tree, 2, batch_size=3)
    np.testing.assert_array_equal(tiled["x"], np.repeat(x_BD, 2, axis=0))
    assert tiled["shared"].shape == () and tiled["none"] is None
    parent_BW = jnp.array([[1, 1], [0, 1], [1, 0]])
    gathered = gather_beams(tiled, parent_BW)
    flat_NW = np.repeat(x_BD, 2, axis=0)
    expected = np.stack([flat_NW[b * 2 + p] for b in range(3) for p in np.asarray(parent_BW[b])])
    np.testing.assert_array_equal(gathered["x"], expected)
    assert gathered["shared"].shape == ()
    with pytest.raises(ValueError, match=r"beam_things: .*batch size 3; got a leaf of shape \(4,"):
        add_beam_dim({"y": jnp.zeros((4, 2))}, 2, batch_size=3, name="beam_things")


def test_length_penalty_formula():
    lengths = np.arange(1, 8)
    for alpha in (0.0, 0.6, 2.0, -0.5):
        np.testing.assert_allclose(length_penalty(lengths, alpha=alpha), lengths**alpha)
        np.testing.assert_allclose(length_penalty(jnp.asarray(lengths, jnp.float32),
                                                  alpha=alpha, normalization="gnmt"),
                                   ((5 + lengths) / 6) ** alpha, rtol=1e-6)
    with pytest.raises(ValueError, match="normalization"):
        length_penalty(3, alpha=1.0, normalization="average")


def test_beam_state_is_a_pytree_with_named_fields():
    names = [f.name for f in dataclasses.fields(BeamState)]
    assert names == ["cache", "live_tokens_BWL", "live_log_probs_BW", "finished_tokens_BWL",
                     "finished_scores_BW", "finished_log_probs_BW", "finished_lengths_BW",
                     "done_B", "num_generated"]
    state = BeamState(**{name: jnp.zeros(()) for name in names})
    assert isinstance(jax.tree.map(lambda x: x + 1, state), BeamState)
    assert len(jax.tree.leaves(state)) == len(names)


# Errors.


def passthrough_step(tokens_BT, cache, positions_BT, context):
    del positions_BT, context
    return jnp.zeros(tokens_BT.shape + (V6,)), cache


def test_cache_or_context_not_batch_major_is_refused():
    config = BeamSearchConfig(max_new_tokens=2, beam_size=2)
    prompt_BP = jnp.ones((2, 3), jnp.int32)
    bad_cache = {"k": jnp.zeros((2, 4)), "table": jnp.zeros((5, 4))}
    with pytest.raises(ValueError, match=r"cache: .*batch size 2; got a leaf of shape \(5, 4\)"):
        beam_search(passthrough_step, prompt_BP, bad_cache, config)
    bad_context = {"bias": jnp.zeros((2, V6)), "table": jnp.zeros((S, V6, V6))}
    with pytest.raises(ValueError, match=r"context: .*got a leaf of shape \(10, 6, 6\)"):
        beam_search(passthrough_step, prompt_BP, None, config, context=bad_context)


@pytest.mark.parametrize(
    "fields, error, match",
    [
        (dict(beam_size=0), ValueError, "BeamSearchConfig.beam_size"),
        (dict(beam_size=2.0), TypeError, "BeamSearchConfig.beam_size"),
        (dict(length_penalty=float("nan")), ValueError, "BeamSearchConfig.length_penalty"),
        (dict(length_penalty=float("inf")), ValueError, "BeamSearchConfig.length_penalty"),
        (dict(length_penalty=jnp.float32(1.0)), TypeError, "BeamSearchConfig.length_penalty"),
        (dict(length_normalization="average"), ValueError,
         "BeamSearchConfig.length_normalization"),
        (dict(max_new_tokens=0), ValueError, "BeamSearchConfig.max_new_tokens"),
        (dict(min_new_tokens=2), ValueError, "BeamSearchConfig.min_new_tokens needs an eos_id"),
        (dict(min_new_tokens=5, eos_id=0), ValueError, "BeamSearchConfig.min_new_tokens"),
        (dict(eos_id=-1), ValueError, "BeamSearchConfig.eos_id"),
        (dict(pad_id=-2), ValueError, "BeamSearchConfig.pad_id"),
        (dict(early_exit="yes"), TypeError, "BeamSearchConfig.early_exit"),
    ],
)
def test_bad_config_field_is_named(fields, error, match):
    with pytest.raises(error, match=match):
        BeamSearchConfig(**{"max_new_tokens": 4, "beam_size": 2, **fields})


@pytest.mark.parametrize("field", ["eos_id", "pad_id"])
def test_token_ids_outside_the_vocabulary_are_refused(field):
    config = BeamSearchConfig(max_new_tokens=2, beam_size=2, **{field: V6})
    with pytest.raises(ValueError, match=f"BeamSearchConfig.{field} must lie in \\[0, {V6}\\)"):
        beam_search(passthrough_step, jnp.ones((1, 2), jnp.int32), None, config)


def test_wrong_config_type_and_rng_are_refused():
    def exploding_step(*args):
        raise AssertionError("step_fn must not be called")

    prompt_BP = jnp.ones((1, 2), jnp.int32)
    with pytest.raises(TypeError, match="config must be a BeamSearchConfig"):
        beam_search(exploding_step, prompt_BP, None, SamplingConfig(max_new_tokens=2))
    config = BeamSearchConfig(max_new_tokens=2, beam_size=2)
    with pytest.raises(ValueError, match="rng must be None"):
        generate(exploding_step, prompt_BP, None, config, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="rng must be None"):
        make_generate_fn(exploding_step, config)(prompt_BP, None, rng=jax.random.key(0))


def test_step_fn_contract_violations_are_named():
    config = BeamSearchConfig(max_new_tokens=3, beam_size=2)

    def flat_logits_step(tokens_BT, cache, positions_BT, context):
        return jnp.zeros(tokens_BT.shape[:1] + (V6,)), cache

    with pytest.raises(ValueError, match=r"logits of shape \[B, T, V\] = \[1, 2, V\]"):
        beam_search(flat_logits_step, jnp.ones((1, 2), jnp.int32), None, config)

    def growing_cache_step(tokens_BT, cache, positions_BT, context):
        return jnp.zeros(tokens_BT.shape + (V6,)), jnp.concatenate([cache, tokens_BT], axis=1)

    with pytest.raises(ValueError, match="cache"):
        beam_search(growing_cache_step, jnp.ones((1, 2), jnp.int32),
                    jnp.zeros((1, 0), jnp.int32), config)
