"""Numerics that only matter on a GPU, checked without one: the VAE's compute dtype there and the
non-finite guard on latents and images."""

import numpy as np
import pytest
import torch

from lamamba.autoencoders import AutoencoderConfig, NonFiniteError, _compute_dtype, check_finite


def test_the_sd_vae_computes_in_bf16_on_a_gpu_by_default():
    # was float16 at every resolution; bf16 has float32's range
    assert _compute_dtype(AutoencoderConfig(), torch.device("cuda", 0)) == torch.bfloat16
    assert _compute_dtype(AutoencoderConfig(dtype="float32"), torch.device("cuda", 0)) == torch.float32
    assert _compute_dtype(AutoencoderConfig(dtype="float16"), torch.device("cpu")) == torch.float32


def test_check_finite_names_the_items():
    x = torch.zeros(8, 3, 2, 2)
    check_finite(x, "latents", list(range(8)))
    x[2, 0, 0, 0], x[6, 1, 1, 1] = float("nan"), float("-inf")
    with pytest.raises(NonFiniteError, match=r"^latents: non-finite values \(NaN or inf\) in img2, img6$"):
        check_finite(x, "latents", [f"img{i}" for i in range(8)])
    moments = np.zeros((7, 2, 2, 1, 2, 2), dtype=np.float16)
    moments[:, 0, 0] = np.inf
    with pytest.raises(NonFiniteError, match="in 0, 1, 2, 3, 4 and 2 more"):
        check_finite(moments, "shard", list(range(7)))
