"""Packed (ragged) forwards: rows' slices in one token axis, each against its own cache row (d3llm.models.packed)."""

import random

import numpy as np
import pytest
import torch

import d3llm
from d3llm.models.packed import MIN_ROWS, PackedRows

TOL = 1e-5


def _rows(seed, n, length=40):
    """n rows: random canvases, cached prefixes and slices ``[start, end)`` (some reaching past the cache)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        size = rng.randint(12, length)
        cached = rng.randint(1, size - 2)
        start = rng.randint(0, cached)
        end = rng.randint(start + 1, size)
        out.append((torch.randint(0, 120, (size,), generator=torch.Generator().manual_seed(rng.randrange(10**6))),
                    cached, start, end))
    return out


def _packed(model, rows, slots=None):
    """Fill a cache with each row's full forward truncated to its prefix, then one packed forward of the slices."""
    n = len(rows)
    cache = model.new_cache(n + 2, 64)
    slots = np.arange(n) if slots is None else np.asarray(slots)
    for (ids, cached, _, _), slot in zip(rows, slots):
        full = model(ids[None], use_cache=True).cache
        for layer in range(cache.num_layers):
            cache.keys[layer][slot, :, : len(ids)] = full.keys[layer][0, :, : len(ids)]
            cache.values[layer][slot, :, : len(ids)] = full.values[layer][0, :, : len(ids)]
        cache.lengths[slot] = cached
    starts = np.array([r[2] for r in rows])
    ends = np.array([r[3] for r in rows])
    kv = np.maximum(cache.lengths[slots], ends)
    packed = PackedRows.from_slices(starts, ends, kv, slots)
    tokens = torch.cat([ids[s:e] for ids, _, s, e in rows])
    logits = model.forward_packed(tokens, packed, torch.arange(packed.size), cache=cache)
    return logits, packed


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_rows_equal_each_row_forwarded_alone(tiny_model, seed):
    model = tiny_model
    rows = _rows(seed, 5)
    with torch.no_grad():
        logits, packed = _packed(model, rows, slots=[3, 0, 4, 1, 2])
        for i, (ids, cached, s, e) in enumerate(rows):
            mine = logits[packed.offsets[i] : packed.offsets[i] + (e - s)]
            # the same row through the padded-batch API: its prefix cached, the slice read against it
            cache = model(ids[None], use_cache=True).cache.truncate(cached)
            ref = model(ids[None, s:e], cache=cache, start=s, append=0).logits[0]
            assert (mine - ref).abs().max() < TOL
            alone, _ = _packed(model, [rows[i]])
            assert torch.equal(mine, alone)  # bit for bit: a row's result never depends on its neighbours


def test_packed_without_cache_and_dream_shift():
    """Without a cache each row attends to its slice only; Dream's shift restarts at every row's first token."""
    model = d3llm.build_model("dream-tiny", seed=3)
    seqs = [torch.randint(0, 120, (n,)) for n in (7, 19, 2, 11)]
    ends = np.array([len(s) for s in seqs])
    packed = PackedRows.from_slices(np.zeros(4, dtype=np.int64), ends)
    with torch.no_grad():
        logits = model.forward_packed(torch.cat(seqs), packed, torch.arange(packed.size))
        for i, ids in enumerate(seqs):
            ref = model(ids[None]).logits[0]
            got = logits[packed.offsets[i] : packed.offsets[i] + len(ids)]
            assert (got - ref).abs().max() < TOL


def test_short_forwards_are_padded_so_rows_match_in_any_batch():
    """Matmuls of fewer than MIN_ROWS rows round differently on the CPU: a 1-token forward is padded."""
    model = d3llm.build_model("llada-tiny", seed=0)
    one = torch.tensor([5])
    others = torch.randint(0, 120, (30,))
    with torch.no_grad():
        alone = model.forward_packed(one, PackedRows.from_slices(np.array([0]), np.array([1])), torch.tensor([0]))
        both = model.forward_packed(torch.cat([one, others]), PackedRows.from_slices(np.array([0, 0]),
                                                                                      np.array([1, 30])),
                                    torch.tensor([0, 3, 7]))
    assert alone.shape == (1, model.config.padded_vocab_size) and MIN_ROWS > 1
    assert torch.equal(alone[0], both[0])


def test_causal_packed_forward_matches_the_causal_model(tiny_model):
    model = tiny_model
    ids = torch.randint(0, 120, (2, 14))
    with torch.no_grad():
        ref = model(ids, causal=True).logits
        cache = model.new_cache(2, 14)
        first = PackedRows.from_slices(np.array([0, 0]), np.array([9, 5]), np.array([9, 5]), np.array([0, 1]))
        model.forward_packed(torch.cat([ids[0, :9], ids[1, :5]]), first, torch.arange(14), cache=cache, causal=True)
        cache.lengths[:] = [9, 5]
        rest = PackedRows.from_slices(np.array([9, 5]), np.array([14, 14]), np.array([14, 14]), np.array([0, 1]))
        out = model.forward_packed(torch.cat([ids[0, 9:], ids[1, 5:]]), rest, torch.arange(rest.size), cache=cache,
                                   causal=True)
    f = 1 if model.family == "dream" else 0  # Dream scores a slice's first position by its own output
    assert (out[f:5] - ref[0, 9 + f:]).abs().max() < TOL
    assert (out[5 + f:] - ref[1, 5 + f:]).abs().max() < TOL


def test_a_gap_before_the_slice_is_refused(tiny_model):
    model = tiny_model
    cache = model.new_cache(1, 20)
    cache.lengths[0] = 3
    rows = PackedRows.from_slices(np.array([6]), np.array([10]), np.array([10]), np.array([0]))
    with pytest.raises(ValueError, match="forwards from position 6 but its cache row holds only 3 positions"):
        model.forward_packed(torch.zeros(4, dtype=torch.long), rows, torch.arange(4), cache=cache)


def test_rows_of_one_shape_share_an_attention_call_and_still_match_alone(tiny_model):
    from d3llm.models.packed import shape_groups

    model = tiny_model
    g = torch.Generator().manual_seed(4)
    same = [(torch.randint(0, 120, (30,), generator=g), 12, 12, 30) for _ in range(3)]
    rows = same + [(torch.randint(0, 120, (25,), generator=g), 10, 8, 20)]
    with torch.no_grad():
        logits, packed = _packed(model, rows)
        assert [grp[1] for grp in shape_groups(packed, cached=True)] == [3, 1]
        for i in range(len(rows)):
            alone, _ = _packed(model, [rows[i]])
            assert torch.equal(logits[packed.offsets[i] : packed.offsets[i] + packed.lengths[i]], alone)
        seqs = [torch.randint(0, 120, (16,), generator=g) for _ in range(4)]
        flat = PackedRows.from_slices(np.zeros(4, dtype=np.int64), np.full(4, 16))
        assert shape_groups(flat, cached=False) == [(0, 4, 16, 16, 0, 0)]
        together = model.forward_packed(torch.cat(seqs), flat, torch.arange(64))
        for i, ids in enumerate(seqs):
            one = model.forward_packed(ids, PackedRows.from_slices(np.array([0]), np.array([16])), torch.arange(16))
            assert torch.equal(together[16 * i : 16 * (i + 1)], one)
