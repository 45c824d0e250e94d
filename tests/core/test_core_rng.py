"""Keyed randomness: draws depend on the keys alone, never on the batch."""

import torch

from lamamba.rng import PerSampleGenerators, keyed_seed


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
