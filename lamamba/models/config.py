"""ModelConfig: the sizes of the LaMamba-Diff presets, every ablation switch of the paper, and the
DiT baselines (Peebles & Xie) that the paper compares against.

The preset selects the backbone: ``S``, ``B``, ``L``, ``XL``, ``XL-release`` (and ``tiny``) are
LaMamba-Diff U-Nets, ``DiT-S/2`` ... ``DiT-XL/8`` (and ``DiT-tiny/2``) are DiT transformers.
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

# DiT's sizes (its models.py): depth, hidden size, heads; each with patch sizes 2, 4 and 8.
DIT_SIZES: dict[str, dict] = {
    "tiny": dict(depth=2, hidden=64, heads=2),  # tests and CPU smoke runs
    "S": dict(depth=12, hidden=384, heads=6),
    "B": dict(depth=12, hidden=768, heads=12),
    "L": dict(depth=24, hidden=1024, heads=16),
    "XL": dict(depth=28, hidden=1152, heads=16),
}
DIT_PRESETS: dict[str, dict] = {
    f"DiT-{size}/{patch}": dict(isotropic_depth=s["depth"], base_width=s["hidden"], cond_dim=s["hidden"],
                                num_heads=(s["heads"],), patch_size=patch)
    for size, s in DIT_SIZES.items() for patch in (2, 4, 8)
}
# LaMamba-Diff fields that have no meaning for DiT: they must stay at their defaults.
LAMAMBA_ONLY = ("enc_depths", "mid_depth", "dec_depths", "d_state", "ssm_ratio", "window_size", "attention",
                "scan", "num_downsamples", "architecture", "skip", "scan_backend")

# The papers' figures (LaMamba-Diff Table 1 at 256 px, XL also Table 2; DiT below), for `lamamba flops --table`.
PAPER_FIGURES: dict[str, dict] = {
    "S": {"params_m": 32, "gflops": {256: 3.19}},
    "B": {"params_m": 127, "gflops": {256: 12.32}},
    "L": {"params_m": 449, "gflops": {256: 33.39}},
    "XL": {"params_m": 656, "gflops": {256: 50.46, 512: 201.20, 1024: 804.18}, "table1_gflops": 49.90},
    "XL-release": {"params_m": 652.5, "gflops": {256: 45.92, 512: 183.04, 1024: 731.52}},
    # DiT's Table 4 (256 px); XL/2 at 512 px from DiT's paper, at 1024 px from LaMamba-Diff's Table 2.
    "DiT-S/2": {"params_m": 33, "gflops": {256: 6.06}},
    "DiT-B/2": {"params_m": 130, "gflops": {256: 23.01}},
    "DiT-L/2": {"params_m": 458, "gflops": {256: 80.71}},
    "DiT-XL/2": {"params_m": 675, "gflops": {256: 118.6, 512: 524.6, 1024: 2910}},
    "DiT-S/4": {"params_m": 33, "gflops": {256: 1.41}},
    "DiT-B/4": {"params_m": 130, "gflops": {256: 5.56}},
    "DiT-L/4": {"params_m": 458, "gflops": {256: 19.70}},
    "DiT-XL/4": {"params_m": 675, "gflops": {256: 29.05}},
    "DiT-S/8": {"params_m": 33, "gflops": {256: 0.36}},
    "DiT-B/8": {"params_m": 130, "gflops": {256: 1.42}},
    "DiT-L/8": {"params_m": 458, "gflops": {256: 5.01}},
    "DiT-XL/8": {"params_m": 675, "gflops": {256: 7.39}},
}


@dataclass
class ModelConfig:
    """A LaMamba-Diff network, or a DiT one for a ``DiT-*`` preset.

    ``input_size`` is the latent side R (image side / 8 for the SD VAE; any size for pixel
    "latents"); ``in_channels`` the latent channels. The output has 2 * in_channels channels with
    ``learn_sigma`` (eps, then the variance interpolation v), else in_channels.
    """

    preset: str = "S"  # a key of PRESETS (LaMamba-Diff) or DIT_PRESETS (DiT)
    input_size: int = 32
    in_channels: int = 4
    num_classes: int = 1000
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1

    # Sizes (None = the preset's value). DiT uses base_width (its hidden size), isotropic_depth (its
    # depth), num_heads (one entry), patch_size and mlp_ratio; cond_dim equals its hidden size.
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
    patch_size: int | None = None  # isotropic and DiT: 1, 2, 4 or 8 (None: the preset's; the U-Net uses 1)
    isotropic_depth: int | None = None  # None: as many blocks as the preset's U-Net
    skip: Literal["add", "concat"] = "add"
    # The release leaves the final Linear at its xavier init (its zeroing is a no-op); DiT zeroes it.
    # None: the backbone's own recipe (False for LaMamba-Diff, True for DiT).
    zero_init_final: bool | None = None

    scan_backend: Literal["auto", "torch", "triton", "mamba_ssm", "reference"] = "auto"

    def __post_init__(self) -> None:
        if self.preset in DIT_PRESETS:
            self._resolve_dit()
            return
        if self.preset not in PRESETS:
            raise ValueError(f"preset: unknown {self.preset!r}; choose one of {sorted(PRESETS)} (LaMamba-Diff) "
                             f"or {sorted(DIT_PRESETS)} (DiT)")
        if self.patch_size is None:
            self.patch_size = 1
        if self.zero_init_final is None:
            self.zero_init_final = False
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

    def _resolve_dit(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        given = [k for k in LAMAMBA_ONLY if getattr(self, k) != defaults[k]]
        if given:
            raise ValueError(f"{given[0]}: a LaMamba-Diff setting; it does not apply to the DiT preset {self.preset}")
        for key, value in DIT_PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.num_heads = tuple(self.num_heads)
        if self.zero_init_final is None:
            self.zero_init_final = True
        if self.cond_dim != self.base_width:
            raise ValueError(f"cond_dim: DiT conditions on its hidden size ({self.base_width}), got {self.cond_dim}")
        if len(self.num_heads) != 1 or self.base_width % self.num_heads[0]:
            raise ValueError(f"num_heads: DiT takes one head count dividing base_width {self.base_width}, "
                             f"got {self.num_heads}")
        if self.base_width % 4:
            raise ValueError(f"base_width: must be divisible by 4 (2-D sin-cos embedding), got {self.base_width}")
        if self.in_channels < 1 or self.input_size < 1 or self.num_classes < 0 or self.isotropic_depth < 1:
            raise ValueError("in_channels, input_size and isotropic_depth must be positive and num_classes >= 0")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob: must be in [0, 1), got {self.class_dropout_prob}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size: {self.input_size} is not divisible by patch_size {self.patch_size}")

    @property
    def backbone(self) -> str:
        """"dit" for the DiT presets, else "lamamba"."""
        return "dit" if self.preset in DIT_PRESETS else "lamamba"

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
        """Width of each encoder stage (isotropic and DiT: one stage of base_width)."""
        if self.architecture == "isotropic" or self.backbone == "dit":
            return (self.base_width,)
        return tuple(self.base_width * 2 ** min(i, self.num_downsamples) for i in range(len(self.enc_depths)))

    @property
    def stage_resolutions(self) -> tuple[int, ...]:
        """Side of each encoder stage's token map."""
        if self.architecture == "isotropic" or self.backbone == "dit":
            return (self.input_size // self.patch_size,)
        return tuple(self.input_size // 2 ** min(i, self.num_downsamples) for i in range(len(self.enc_depths)))

    def replace(self, **changes) -> ModelConfig:
        """A copy with ``changes`` applied (e.g. another ``input_size`` for a warm start)."""
        return dataclasses.replace(self, **changes)
