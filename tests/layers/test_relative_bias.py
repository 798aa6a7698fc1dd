"""T5 relative-position buckets and bias against a numpy formula, Hugging Face T5
(`_relative_position_bucket` and `compute_bias`, including cached decoding) and
properties of the bucketing."""

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flaxzoo.layers.relative_bias import relative_position_bias, relative_position_bucket

FAST = settings(max_examples=40, deadline=None)
REL = np.arange(-300, 301)


def numpy_bucket(rel, bidirectional, num_buckets, max_distance):
    """T5's rule for one relative position, in float64."""
    bucket = 0
    if bidirectional:
        num_buckets //= 2
        bucket += num_buckets if rel > 0 else 0
        n = abs(rel)
    else:
        n = max(-rel, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return bucket + n
    log_part = math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    return bucket + min(num_buckets - 1, max_exact + int(log_part))


def _torch_t5():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    return torch, T5Attention


# ---------------------------------------------------------------- buckets


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 64), (8, 20), (10, 50)])
def test_bucket_matches_numpy_formula(bidirectional, num_buckets, max_distance):
    got = relative_position_bucket(REL, bidirectional=bidirectional, num_buckets=num_buckets,
                                   max_distance=max_distance)
    assert got.dtype == np.int32 and got.shape == REL.shape
    want = [numpy_bucket(int(r), bidirectional, num_buckets, max_distance) for r in REL]
    np.testing.assert_array_equal(got, want)


# (6, 100), (40, 1000), (19, 4096) and (51, 64) each have a distance that lands
# exactly on a bucket boundary in float32 (10, 100, 192, 40); XLA's own division
# by a constant rounds those into the bucket below.
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance",
                         [(32, 128), (16, 64), (33, 128), (6, 100), (40, 1000), (19, 4096), (51, 64)])
def test_bucket_matches_t5_eagerly_and_under_jit(bidirectional, num_buckets, max_distance):
    torch, T5Attention = _torch_t5()
    ref = T5Attention._relative_position_bucket(
        torch.tensor(REL), bidirectional=bidirectional, num_buckets=num_buckets,
        max_distance=max_distance).numpy()
    kwargs = dict(bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    np.testing.assert_array_equal(relative_position_bucket(REL, **kwargs), ref)
    np.testing.assert_array_equal(jax.jit(lambda r: relative_position_bucket(r, **kwargs))(REL), ref)


def test_bucket_keeps_any_shape():
    rel = np.arange(-12, 12).reshape(2, 3, 4)
    got = relative_position_bucket(rel, bidirectional=True, num_buckets=8, max_distance=16)
    assert got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got.reshape(-1), [numpy_bucket(int(r), True, 8, 16) for r in rel.reshape(-1)])


# ---------------------------------------------------------------- bias


@pytest.mark.parametrize("is_decoder, q_len, k_len, offset", [
    (False, 7, 7, 0),    # encoder self-attention
    (False, 3, 40, 0),   # bidirectional, keys far beyond max_distance
    (True, 7, 7, 0),     # decoder prefill
    (True, 1, 9, 8),     # one cached decoding step
    (True, 3, 30, 27),   # a chunk after a cache
])
def test_bias_matches_t5_compute_bias(is_decoder, q_len, k_len, offset):
    torch, T5Attention = _torch_t5()
    from transformers import T5Config

    config = T5Config(d_model=16, d_kv=4, num_heads=4, relative_attention_num_buckets=8,
                      relative_attention_max_distance=20, is_decoder=is_decoder)
    torch.manual_seed(0)
    attention = T5Attention(config, has_relative_attention_bias=True, layer_idx=0)
    with torch.no_grad():
        ref = attention.compute_bias(q_len, k_len, past_seen_tokens=offset).numpy()
    table = attention.relative_attention_bias.weight.detach().numpy()  # [R, N]
    got = relative_position_bias(table, np.arange(q_len) + offset, np.arange(k_len),
                                 bidirectional=not is_decoder, num_buckets=8, max_distance=20)
    assert got.shape == (1, 4, q_len, k_len) == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_bias_with_per_row_offsets():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(8, 3)).astype(np.float32)
    q_pos = np.array([[4, 5], [0, 1]])
    k_pos = np.arange(6)
    got = np.asarray(relative_position_bias(table, q_pos, k_pos, bidirectional=False, num_buckets=8,
                                            max_distance=16))
    assert got.shape == (2, 3, 2, 6)
    for b in range(2):
        for t in range(2):
            for s in range(6):
                bucket = numpy_bucket(int(k_pos[s] - q_pos[b, t]), False, 8, 16)
                np.testing.assert_array_equal(got[b, :, t, s], table[bucket])
    jitted = jax.jit(lambda q, k: relative_position_bias(table, q, k, bidirectional=False,
                                                         num_buckets=8, max_distance=16))
    np.testing.assert_array_equal(jitted(q_pos, k_pos), got)


def test_bias_keeps_the_table_dtype():
    table = np.ones((4, 2), np.float16)
    assert relative_position_bias(table, np.arange(2), np.arange(3), bidirectional=True,
                                  num_buckets=4, max_distance=8).dtype == np.float16


# ---------------------------------------------------------------- properties


def _config():
    return st.sampled_from([(32, 128), (16, 64), (8, 20), (12, 30), (33, 128), (4, 8)])


@FAST
@given(config=_config(), bidirectional=st.booleans(),
       rel=st.lists(st.integers(-10_000, 10_000), min_size=1, max_size=20))
def test_bucket_is_in_range_and_splits_by_sign(config, bidirectional, rel):
    num_buckets, max_distance = config
    rel = np.array(rel)
    got = np.asarray(relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                              max_distance=max_distance))
    assert ((got >= 0) & (got < num_buckets)).all()
    if bidirectional:
        half = num_buckets // 2
        np.testing.assert_array_equal(got >= half, rel > 0)
    else:
        assert (got[rel >= 0] == 0).all()  # keys at or after the query share bucket 0


@FAST
@given(config=_config(), bidirectional=st.booleans(), sign=st.sampled_from([-1, 1]))
def test_bucket_is_monotone_exact_near_and_clamped_far(config, bidirectional, sign):
    num_buckets, max_distance = config
    if not bidirectional and sign > 0:
        sign = -1  # causal buckets only distinguish keys before the query
    distances = np.arange(0, 3 * max_distance)
    got = np.asarray(relative_position_bucket(sign * distances, bidirectional=bidirectional,
                                              num_buckets=num_buckets, max_distance=max_distance))
    side = num_buckets // 2 if bidirectional else num_buckets
    base = side if (bidirectional and sign > 0) else 0
    got = got - base * (distances > 0)  # distance 0 is on the non-positive side
    assert (np.diff(got) >= 0).all()
    max_exact = side // 2
    np.testing.assert_array_equal(got[:max_exact], distances[:max_exact])
    assert (got[max_distance:] == side - 1).all()
    assert (got[:max_distance] <= side - 1).all()
    # In these configs the log spacing skips no bucket: each one holds some distance.
    assert set(got[1:max_distance]) | {0} == set(range(side))


# ---------------------------------------------------------------- errors


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="relative_position must be integers"):
        relative_position_bucket(np.array([1.0]), bidirectional=True)
    with pytest.raises(ValueError, match="num_buckets must be >= 4 when bidirectional=True; got 2"):
        relative_position_bucket(np.array([1]), bidirectional=True, num_buckets=2)
    with pytest.raises(ValueError, match="num_buckets must be >= 2"):
        relative_position_bucket(np.array([1]), bidirectional=False, num_buckets=1)
    with pytest.raises(ValueError, match="max_distance must exceed.*got 8"):
        relative_position_bucket(np.array([1]), bidirectional=False, num_buckets=16, max_distance=8)
    table = np.zeros((8, 2), np.float32)
    pos = np.arange(3)
    with pytest.raises(ValueError, match=r"table must have shape .*num_buckets=32; got \(8, 2\)"):
        relative_position_bias(table, pos, pos, bidirectional=True)
    with pytest.raises(ValueError, match=r"table must have shape .*got \(8,\)"):
        relative_position_bias(table[:, 0], pos, pos, bidirectional=True, num_buckets=8)
    with pytest.raises(ValueError, match="key_positions must be integers"):
        relative_position_bias(table, pos, pos * 1.0, bidirectional=True, num_buckets=8)
    with pytest.raises(ValueError, match=r"query_positions must have shape .*got \(1, 1, 3\)"):
        relative_position_bias(table, pos[None, None], pos, bidirectional=True, num_buckets=8)
    with pytest.raises(ValueError, match=r"same batch size.*\(2, 3\) and \(4, 3\)"):
        relative_position_bias(table, np.zeros((2, 3), int), np.zeros((4, 3), int),
                               bidirectional=True, num_buckets=8)
