"""`generate_gpt` and `generate_t5` against transformers' PyTorch `generate`.

Random-weight GPT-2 and T5 models are built from small transformers configs and
converted with `load_hf_gpt2` / `load_hf_t5`; both libraries then decode the same batches:

- greedy: the same token ids, for a left-padded batch of prompts (GPT-2, with
  `attention_mask` there and `prompt_valid_BP` here) and a padded encoder batch (T5),
  with an EOS id that some rows emit early and others never (after it both emit the pad
  id); and with a repetition penalty and `min_new_tokens`;
- beam search (4 beams, `early_stopping="never"`, the 4-best list): the same hypotheses
  in the same order, the same lengths, and transformers' `sequences_scores` equal to
  `scores_BW` within 1e-4, for several length penalties. The EOS id is one the model
  emits in some beams and not in others, so finished hypotheses enter, compete in and
  leave the pool of finished ones; each test checks that the returned lengths differ.

The weights are drawn larger than transformers' defaults (GPT-2's initializer range,
T5's feedforward and output weights), so next-token distributions are peaky: the scores
of competing hypotheses differ clearly (the closest two returned ones by more than 1e-4,
the two libraries by at most a few 1e-5) and float32 rounding in torch and XLA cannot
swap two of them. The seeds and EOS ids below were picked for that and for EOS occurring
where the tests need it; the tests check the latter.

What the comparison accounts for, on the transformers side:
- its output starts with the prompt (GPT-2) or the decoder start token (T5);
- it stops once every row (every beam pool) is done, so it can return fewer than
  max_new_tokens columns; flaxzoo always returns L, padded;
- its beam search (transformers 5) fills a hypothesis after EOS with
  `pad_token_id or eos_token_id`, so with T5's pad id 0 it repeats the EOS id where
  flaxzoo writes `pad_id`;
- its repetition penalty skips left padding by the attention mask (`prompt_ignore_length`,
  transformers 5; older releases penalise the padding ids too), as flaxzoo counts real
  prompt tokens only; a padded batch is checked against each prompt run alone, which
  holds for either.

Dimension key: B batch, P prompt length, S encoder input length, L new tokens
(max_new_tokens), W beams, V vocab.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.decoding import BeamSearchConfig, SamplingConfig, left_pad
from flaxzoo.models.convert import load_hf_gpt2, load_hf_t5
from flaxzoo.train.generate import generate_gpt, generate_t5

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V = 64
L = 8
W = 4
SCORE_TOL = 1e-4
ALPHAS = [0.0, 1.0, 2.0, -0.5]

GPT2_CONFIG = dict(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                   initializer_range=0.3, bos_token_id=None, eos_token_id=None,
                   attn_implementation="eager")
GPT2_SEED = 0
GPT2_EOS = 23
GPT2_PAD = V - 1  # not 0, so transformers' beam search fills with it (see above)
REP_PROMPTS = [[5, 9, 5, 40, 9, 5], [23, 2, 17, 2, 23, 30]]  # ids repeated in each
REP_EOS, REP_PENALTY, REP_MIN_NEW = 2, 1.5, 3

T5_CONFIG = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                 num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, attn_implementation="eager")
T5_VERSIONS = {  # the weight scale (see `t5`), seed and EOS id of each version
    "v1.0": dict(hf=dict(feed_forward_proj="relu", tie_word_embeddings=True),
                 scale=2.0, seed=2, eos=58),
    "v1.1": dict(hf=dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
                 scale=1.5, seed=1, eos=36),
}
T5_PAD = T5_START = 0


# Models and batches.


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    torch.manual_seed(GPT2_SEED)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_CONFIG)).eval()
    directory = tmp_path_factory.mktemp("gpt2")
    hf_model.save_pretrained(directory)
    return hf_model, load_hf_gpt2(directory)[1]


@pytest.fixture(scope="module", params=sorted(T5_VERSIONS))
def t5(request, tmp_path_factory):
    """Weights drawn with `initializer_factor=scale`, then queries, keys and relative
    position biases scaled back: T5 does not scale its attention logits, and with those
    scaled too attention turns nearly hard and torch and XLA part by more than 1e-4 in
    float32. Feedforward and output weights alone make the distributions peaky."""
    version = T5_VERSIONS[request.param]
    torch.manual_seed(version["seed"])
    hf_config = transformers.T5Config(**T5_CONFIG, **version["hf"],
                                      initializer_factor=version["scale"])
    hf_model = transformers.T5ForConditionalGeneration(hf_config).eval()
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if name.endswith((".q.weight", ".k.weight", ".relative_attention_bias.weight")):
                p.div_(version["scale"])
    directory = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(directory)
    return hf_model, load_hf_t5(directory)[1], version["eos"]


def _gpt2_prompts():
    """A left-padded batch of three prompts of 5, 3 and 7 tokens: (prompt_BP, valid_BP)."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, V, n).tolist() for n in (5, 3, 7)]
    return left_pad(prompts, pad_id=GPT2_PAD)


def _t5_inputs():
    """Three encoder inputs of 7, 4 and 2 tokens, right-padded: (inputs_BS, valid_BS)."""
    rng = np.random.default_rng(0)
    inputs_BS = rng.integers(2, V, size=(3, 7))
    valid_BS = np.arange(7)[None, :] < np.array([7, 4, 2])[:, None]
    inputs_BS[~valid_BS] = T5_PAD
    return jnp.asarray(inputs_BS), jnp.asarray(valid_BS)


# transformers' side.


def _hf_generate(hf_model, input_ids, attention_mask, **options):
    """transformers' `generate` without sampling, for L new tokens."""
    with torch.no_grad():
        return hf_model.generate(torch.tensor(np.asarray(input_ids)),
                                 attention_mask=torch.tensor(np.asarray(attention_mask, np.int64)),
                                 do_sample=False, max_new_tokens=L, **options)


def _hf_beam_search(hf_model, input_ids, attention_mask, *, alpha, eos, pad, **options):
    return _hf_generate(hf_model, input_ids, attention_mask, num_beams=W, num_return_sequences=W,
                        early_stopping="never", length_penalty=alpha, eos_token_id=eos,
                        pad_token_id=pad, return_dict_in_generate=True, output_scores=True,
                        **options)


def _new_tokens(sequences, skip, fill):
    """The new tokens of transformers' output, widened to L columns with `fill` (it stops
    once every row is done)."""
    new_NM = np.asarray(sequences)[:, skip:]
    assert new_NM.shape[1] <= L
    return np.pad(new_NM, ((0, 0), (0, L - new_NM.shape[1])), constant_values=fill)


def _lengths(tokens_NL, eos):
    """New tokens up to and including the first EOS (L if none)."""
    is_eos_NL = tokens_NL == eos
    return np.where(is_eos_NL.any(axis=-1), is_eos_NL.argmax(axis=-1) + 1, L)


# Comparisons.


def _assert_same_greedy(out, ref_BL, *, eos, pad):
    np.testing.assert_array_equal(np.asarray(out.tokens_BL), ref_BL)
    lengths_B = np.asarray(out.lengths_B)
    np.testing.assert_array_equal(lengths_B, _lengths(ref_BL, eos))
    after_eos_BL = np.arange(L)[None, :] >= lengths_B[:, None]
    assert (ref_BL[after_eos_BL] == pad).all()
    # Some rows finish early and some never, so finished rows are padded and kept done.
    assert lengths_B.min() < L - 1 and not (ref_BL == eos).any(axis=1).all(), lengths_B


def _assert_same_n_best(out, ref, *, skip, alpha, eos, pad, hf_fills):
    """Same W-best hypotheses per row, in order, with the same lengths and scores;
    transformers writes one of `hf_fills` after EOS, flaxzoo `pad`."""
    batch = out.tokens_BWL.shape[0]
    ref_BWL = _new_tokens(ref.sequences, skip, hf_fills[0]).reshape(batch, W, L)
    ref_scores_BW = ref.sequences_scores.numpy().reshape(batch, W)
    tokens_BWL, lengths_BW = np.asarray(out.tokens_BWL), np.asarray(out.lengths_BW)

    np.testing.assert_array_equal(lengths_BW, _lengths(ref_BWL, eos))
    generated_BWL = np.arange(L) < lengths_BW[..., None]
    np.testing.assert_array_equal(np.where(generated_BWL, tokens_BWL, -1),
                                  np.where(generated_BWL, ref_BWL, -1))
    assert (tokens_BWL[~generated_BWL] == pad).all()
    assert np.isin(ref_BWL[~generated_BWL], hf_fills).all()
    np.testing.assert_allclose(out.scores_BW, ref_scores_BW, atol=SCORE_TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out.log_probs_BW) / lengths_BW ** alpha,
                               ref_scores_BW, atol=SCORE_TOL, rtol=0)
    # Hypotheses finished by EOS at different lengths were ranked against each other.
    assert any(len(set(row)) > 1 for row in lengths_BW.tolist()), lengths_BW


# GPT-2.


def test_gpt2_greedy_matches_on_a_left_padded_batch(gpt2):
    hf_model, model = gpt2
    prompt_BP, valid_BP = _gpt2_prompts()
    config = SamplingConfig(max_new_tokens=L, temperature=0.0, eos_id=GPT2_EOS,
                            pad_id=GPT2_PAD)
    out = generate_gpt(model, prompt_BP, config, prompt_valid_BP=valid_BP)
    ref = _hf_generate(hf_model, prompt_BP, valid_BP, num_beams=1, eos_token_id=GPT2_EOS,
                       pad_token_id=GPT2_PAD)
    _assert_same_greedy(out, _new_tokens(ref, prompt_BP.shape[1], GPT2_PAD), eos=GPT2_EOS,
                        pad=GPT2_PAD)


def test_gpt2_greedy_with_repetition_penalty_and_min_new_tokens(gpt2):
    hf_model, model = gpt2
    prompt_BP = np.asarray(REP_PROMPTS)
    valid_BP = np.ones(prompt_BP.shape, bool)
    config = SamplingConfig(max_new_tokens=L, temperature=0.0, repetition_penalty=REP_PENALTY,
                            min_new_tokens=REP_MIN_NEW, eos_id=REP_EOS, pad_id=GPT2_PAD)
    out = generate_gpt(model, jnp.asarray(prompt_BP), config)

    def reference(**options):
        ref = _hf_generate(hf_model, prompt_BP, valid_BP, pad_token_id=GPT2_PAD, **options)
        return _new_tokens(ref, prompt_BP.shape[1], GPT2_PAD)

    ref_BL = reference(repetition_penalty=REP_PENALTY, min_new_tokens=REP_MIN_NEW,
                       eos_token_id=REP_EOS)
    np.testing.assert_array_equal(np.asarray(out.tokens_BL), ref_BL)
    np.testing.assert_array_equal(out.lengths_B, _lengths(ref_BL, REP_EOS))
    # Each option changes the output here, so both are exercised.
    assert _lengths(reference(eos_token_id=REP_EOS), REP_EOS).min() < REP_MIN_NEW
    assert not np.array_equal(reference(repetition_penalty=REP_PENALTY), reference())


def test_gpt2_repetition_penalty_ignores_left_padding(gpt2):
    """Padding is not a seen token: flaxzoo's left-padded batch gives what transformers
    gives for each prompt alone."""
    hf_model, model = gpt2
    prompt_BP, valid_BP = _gpt2_prompts()
    config = SamplingConfig(max_new_tokens=L, temperature=0.0, repetition_penalty=REP_PENALTY,
                            pad_id=GPT2_PAD)
    out = generate_gpt(model, prompt_BP, config, prompt_valid_BP=valid_BP)
    for b in range(prompt_BP.shape[0]):
        prompt_1P = np.asarray(prompt_BP)[b:b + 1, np.asarray(valid_BP)[b]]
        ref = _hf_generate(hf_model, prompt_1P, np.ones(prompt_1P.shape, bool),
                           repetition_penalty=REP_PENALTY, pad_token_id=GPT2_PAD)
        np.testing.assert_array_equal(np.asarray(out.tokens_BL)[b:b + 1],
                                      _new_tokens(ref, prompt_1P.shape[1], GPT2_PAD))
    plain = _hf_generate(hf_model, prompt_BP, valid_BP, pad_token_id=GPT2_PAD)
    assert not np.array_equal(out.tokens_BL, _new_tokens(plain, prompt_BP.shape[1], GPT2_PAD))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_gpt2_beam_search_matches_n_best_and_scores(gpt2, alpha):
    hf_model, model = gpt2
    prompt_BP, valid_BP = _gpt2_prompts()
    config = BeamSearchConfig(max_new_tokens=L, beam_size=W, length_penalty=alpha,
                              eos_id=GPT2_EOS, pad_id=GPT2_PAD)
    out = generate_gpt(model, prompt_BP, config, prompt_valid_BP=valid_BP)
    ref = _hf_beam_search(hf_model, prompt_BP, valid_BP, alpha=alpha, eos=GPT2_EOS,
                          pad=GPT2_PAD)
    _assert_same_n_best(out, ref, skip=prompt_BP.shape[1], alpha=alpha, eos=GPT2_EOS,
                        pad=GPT2_PAD, hf_fills=(GPT2_PAD,))


# T5.


def test_t5_greedy_matches_on_a_padded_batch(t5):
    hf_model, model, eos = t5
    inputs_BS, valid_BS = _t5_inputs()
    config = SamplingConfig(max_new_tokens=L, temperature=0.0, eos_id=eos, pad_id=T5_PAD)
    out = generate_t5(model, inputs_BS, config, inputs_valid_BS=valid_BS)
    ref = _hf_generate(hf_model, inputs_BS, valid_BS, num_beams=1, eos_token_id=eos,
                       pad_token_id=T5_PAD, decoder_start_token_id=T5_START)
    assert (ref[:, 0] == T5_START).all()
    _assert_same_greedy(out, _new_tokens(ref, 1, T5_PAD), eos=eos, pad=T5_PAD)


@pytest.mark.parametrize("alpha", ALPHAS[:2])
def test_t5_beam_search_matches_n_best_and_scores(t5, alpha):
    hf_model, model, eos = t5
    inputs_BS, valid_BS = _t5_inputs()
    config = BeamSearchConfig(max_new_tokens=L, beam_size=W, length_penalty=alpha, eos_id=eos,
                              pad_id=T5_PAD)
    out = generate_t5(model, inputs_BS, config, inputs_valid_BS=valid_BS)
    ref = _hf_beam_search(hf_model, inputs_BS, valid_BS, alpha=alpha, eos=eos, pad=T5_PAD,
                          decoder_start_token_id=T5_START)
    assert (ref.sequences[:, 0] == T5_START).all()
    # transformers 5 fills after EOS with `pad_token_id or eos_token_id`: EOS, as the pad
    # id is 0 (transformers 4: the pad id).
    _assert_same_n_best(out, ref, skip=1, alpha=alpha, eos=eos, pad=T5_PAD,
                        hf_fills=(eos, T5_PAD))
