"""Keyed randomness: draws depend on the keys alone, never on the batch."""

import math

import numpy as np
import torch

from lamamba.rng import PerSampleGenerators, keyed_normals, keyed_seed


def test_rows_do_not_depend_on_the_batch():
    alone = PerSampleGenerators(7, "noise", [(3, 0)]).randn((2, 4))
    batch = PerSampleGenerators(7, "noise", [(0, 0), (3, 0), (5, 1)]).randn((2, 4))
    assert torch.equal(alone[0], batch[1])


def test_keys_purposes_and_seeds_give_different_streams():
    base = PerSampleGenerators(7, "noise", [(3, 0)]).randn((16,))
    for other in (PerSampleGenerators(7, "noise", [(3, 1)]), PerSampleGenerators(7, "flip", [(3, 0)]),
                  PerSampleGenerators(8, "noise", [(3, 0)])):
        assert not torch.equal(base, other.randn((16,)))
    assert keyed_seed(1, 2) != keyed_seed(2, 1)


def test_successive_draws_continue_each_stream():
    gens = PerSampleGenerators(0, "sample", [4, 9])
    first, second = gens.randn((3,)), gens.randn((3,))
    assert not torch.equal(first, second)
    assert torch.equal(PerSampleGenerators(0, "sample", [9]).randn((3,))[0], first[1])


def test_keyed_seed_is_the_documented_blake2b():
    # docs/protocols.md: blake2b (8 bytes) over the keys as 8-byte little-endian ints, >> 1.
    assert keyed_seed(0, 2, 5, 1) == 4340132013700489857
    assert keyed_seed(7, 1, 123456789, 3) == 8156104058150026606


def reference_normals(seed, n):
    """keyed_normals' definition one value at a time, in Python integers and floats."""
    out = [0.0] * n
    for j in range(n // 2):
        z = (seed + (j + 1) * 0x9E3779B97F4A7C15) % 2 ** 64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2 ** 64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2 ** 64
        z ^= z >> 31
        radius = math.sqrt(-2 * math.log(((z >> 40) + 1) / 2 ** 24))
        angle = ((z & 0xFFFFFFFF) >> 8) * 2 * math.pi / 2 ** 24
        out[j], out[n // 2 + j] = radius * math.cos(angle), radius * math.sin(angle)
    return out


def test_keyed_normals_are_the_documented_counter_based_draw():
    seeds = np.array([keyed_seed(3, 2, i, e) for i, e in ((0, 0), (1, 0), (0, 1), (2 ** 40, 7))], dtype=np.uint64)
    batch = keyed_normals(seeds, 64)
    assert batch.shape == (4, 64) and batch.dtype == np.float32
    for row, seed in enumerate(seeds):
        np.testing.assert_allclose(batch[row], reference_normals(int(seed), 64), rtol=0, atol=2e-5)
        assert np.array_equal(keyed_normals(seeds[row:row + 1], 64)[0], batch[row])  # one at a time = batched
    assert len({r.tobytes() for r in batch}) == 4  # other index, other epoch: other draws
    big = keyed_normals(seeds[:1], 1 << 16)[0]
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1) < 0.02 and abs(np.mean(big ** 4) - 3) < 0.1
