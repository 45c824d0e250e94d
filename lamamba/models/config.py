"""ModelConfig: the sizes of the LaMamba-Diff presets and every ablation switch of the paper.

Architecture fields left at ``None`` take the preset's value when the config is built, so a saved
config (``to_dict``) always holds the resolved numbers and rebuilds the same network even if the
presets change later.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

# d, encoder depths, mid depth, decoder depths, cond_dim, d_state, attention heads per stage width.
# S and B take Swin's head width of 32 channels (the paper does not give their heads); L and XL use
# 16 heads in every stage, as the release does.
PRESETS: dict[str, dict] = {
    "tiny": dict(base_width=32, enc_depths=(1, 1, 1, 0), mid_depth=1, dec_depths=(0, 2, 2, 2),
                 cond_dim=64, d_state=2, num_heads=(1, 2, 4, 4)),
    "S": dict(base_width=96, enc_depths=(2, 2, 2, 0), mid_depth=1, dec_depths=(0, 3, 3, 3),
              cond_dim=192, d_state=1, num_heads=(3, 6, 12, 12)),
    "B": dict(base_width=192, enc_depths=(2, 2, 2, 0), mid_depth=1, dec_depths=(0, 3, 3, 3),
              cond_dim=384, d_state=1, num_heads=(6, 12, 24, 24)),
    "L": dict(base_width=256, enc_depths=(2, 2, 2, 2), mid_depth=2, dec_depths=(3, 3, 3, 3),
              cond_dim=1024, d_state=16, num_heads=(16, 16, 16, 16)),
    "XL": dict(base_width=320, enc_depths=(2, 2, 2, 2), mid_depth=2, dec_depths=(3, 3, 3, 3),
               cond_dim=1280, d_state=16, num_heads=(16, 16, 16, 16)),
    # The authors' released XL weights use d_state = 1.
    "XL-release": dict(base_width=320, enc_depths=(2, 2, 2, 2), mid_depth=2, dec_depths=(3, 3, 3, 3),
                       cond_dim=1280, d_state=1, num_heads=(16, 16, 16, 16)),
}

# The paper's figures at 256 px (Table 1; XL also Table 2), for `lamamba flops --table`.
PAPER_FIGURES: dict[str, dict] = {
    "S": {"params_m": 32, "gflops": {256: 3.19}},
    "B": {"params_m": 127, "gflops": {256: 12.32}},
    "L": {"params_m": 449, "gflops": {256: 33.39}},
    "XL": {"params_m": 656, "gflops": {256: 50.46, 512: 201.20, 1024: 804.18}, "table1_gflops": 49.90},
    "XL-release": {"params_m": 652.5, "gflops": {256: 45.92, 512: 183.04, 1024: 731.52}},
}


@dataclass
class ModelConfig:
    """A LaMamba-Diff network.

    ``input_size`` is the latent side R (image side / 8 for the SD VAE; any size for pixel
    "latents"); ``in_channels`` the latent channels. The output has 2 * in_channels channels with
    ``learn_sigma`` (eps, then the variance interpolation v), else in_channels.
    """

    preset: Literal["tiny", "S", "B", "L", "XL", "XL-release"] = "S"
    input_size: int = 32
    in_channels: int = 4
    num_classes: int = 1000
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1

    # Sizes (None = the preset's value).
    base_width: int | None = None
    enc_depths: tuple[int, ...] | None = None
    mid_depth: int | None = None
    dec_depths: tuple[int, ...] | None = None  # None with an enc_depths override: reversed enc + 1
    cond_dim: int | None = None
    d_state: int | None = None
    num_heads: tuple[int, ...] | None = None  # per encoder stage; decoder stages share their twin's
    ssm_ratio: float = 2.0
    mlp_ratio: float = 4.0
    window_size: int = 8

    # Ablation switches (paper Tables 5-7).
    attention: Literal["window", "window_noshift", "global", "none"] = "window"
    scan: Literal["continuous", "raster"] = "continuous"
    num_downsamples: int = 2
    architecture: Literal["unet", "isotropic"] = "unet"
    patch_size: int = 1  # isotropic only: 1, 2, 4 or 8
    isotropic_depth: int | None = None  # None: as many blocks as the preset's U-Net
    skip: Literal["add", "concat"] = "add"
    # The release leaves the final Linear at its xavier init (its zeroing is a no-op); DiT zeroes it.
    zero_init_final: bool = False

    scan_backend: Literal["auto", "torch", "mamba_ssm", "reference"] = "auto"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset: unknown {self.preset!r}; choose one of {sorted(PRESETS)}")
        if self.enc_depths is not None and self.dec_depths is None:
            # The SD U-Net decoder: one block more than the encoder twin, none where it has none.
            self.dec_depths = tuple(e + 1 if e else 0 for e in reversed(self.enc_depths))
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.enc_depths = tuple(self.enc_depths)
        self.dec_depths = tuple(self.dec_depths)
        self.num_heads = tuple(self.num_heads)
        if self.isotropic_depth is None:
            self.isotropic_depth = sum(self.enc_depths) + self.mid_depth + sum(self.dec_depths)
        self._validate()

    def _validate(self) -> None:
        n = len(self.enc_depths)
        if len(self.dec_depths) != n:
            raise ValueError(f"dec_depths: needs {n} entries like enc_depths, got {self.dec_depths}")
        if len(self.num_heads) < n:
            raise ValueError(f"num_heads: needs {n} entries (one per stage), got {self.num_heads}")
        if self.base_width % 4:
            raise ValueError(f"base_width: must be divisible by 4 (2-D sin-cos embedding), got {self.base_width}")
        if self.in_channels < 1 or self.input_size < 1 or self.num_classes < 0:
            raise ValueError("in_channels and input_size must be positive and num_classes >= 0")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob: must be in [0, 1), got {self.class_dropout_prob}")
        if self.architecture == "unet":
            if not 1 <= self.num_downsamples < n:
                raise ValueError(f"num_downsamples: must be in 1..{n - 1}, got {self.num_downsamples}")
            if self.patch_size != 1:
                raise ValueError("patch_size: the U-Net embeds 1x1 patches; use architecture=isotropic")
            factor = 2 ** self.num_downsamples
            if self.input_size % factor:
                raise ValueError(f"input_size: {self.input_size} is not divisible by 2^num_downsamples = "
                                 f"{factor}")
        elif self.input_size % self.patch_size:
            raise ValueError(f"input_size: {self.input_size} is not divisible by patch_size {self.patch_size}")
        for width, heads in zip(self.stage_widths, self.num_heads):
            if width % heads:
                raise ValueError(f"num_heads: {heads} heads do not divide a stage width of {width}")
        for res in self.stage_resolutions:
            if self.attention != "global" and res > self.window_size and res % self.window_size:
                raise ValueError(f"input_size: a stage map of {res} x {res} is larger than window_size "
                                 f"{self.window_size} but not a multiple of it")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Width of each encoder stage (isotropic: one stage of base_width)."""
        if self.architecture == "isotropic":
            return (self.base_width,)
        return tuple(self.base_width * 2 ** min(i, self.num_downsamples) for i in range(len(self.enc_depths)))

    @property
    def stage_resolutions(self) -> tuple[int, ...]:
        """Side of each encoder stage's token map."""
        if self.architecture == "isotropic":
            return (self.input_size // self.patch_size,)
        return tuple(self.input_size // 2 ** min(i, self.num_downsamples) for i in range(len(self.enc_depths)))

    def replace(self, **changes) -> ModelConfig:
        """A copy with ``changes`` applied (e.g. another ``input_size`` for a warm start)."""
        return dataclasses.replace(self, **changes)
