"""The TF-FID Inception-v3: the 2015-12-05 TensorFlow graph that FID, sFID and IS are defined on.

This is the network of ``classify_image_graph_def.pb`` (what ADM's evaluator runs) laid out with
the module and state-dict names of the widely used ``pt_inception-2015-12-05`` PyTorch port, so
that file loads strictly. It differs from torchvision's Inception-v3 where the TF graph does:

- a 1008-way classifier (``fc``), of which IS uses the logits WITHOUT the bias;
- average pools inside the mixed blocks ignore padding (TF "SAME" average pooling);
- the last block (``Mixed_7c``) pools its fourth branch with a 3x3 max pool, not an average;
- inputs are uint8 images resized to 299 with TF1's bilinear resize (no half-pixel offset),
  then normalised as (x - 128) / 128.

Outputs (``FIDInceptionV3.forward``): ``pool`` (B, 2048) = pool_3, ``spatial`` (B, 2023) = the
first 7 channels of mixed_6/conv (``Mixed_6d.branch1x1``) flattened in NHWC order, and
``logits`` (B, 1008) = pool_3 @ fc.weight.T (no bias).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299
NUM_CLASSES = 1008  # the 2015 graph's classifier: 1000 ImageNet classes + 8 unused
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023


class InceptionWeightsError(RuntimeError):
    """The Inception weights file is missing or does not match the network; the message says how."""


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, as in the TF graph) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    """TF's 3x3/1 "SAME" average pool: border windows average only the pixels inside the image."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _Mixed(nn.Module):
    """A mixed block: parallel branches concatenated on channels; ``branches`` exposes them."""

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.branches(x), dim=1)


class InceptionA(_Mixed):
    """35x35 block (Mixed_5b/5c/5d): 1x1, 5x5, double 3x3 and pooled 1x1 branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def branches(self, x):
        return [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_same(x)),
        ]


class InceptionB(_Mixed):
    """35 -> 17 reduction (Mixed_6a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def branches(self, x):
        return [
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ]


class InceptionC(_Mixed):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def branches(self, x):
        dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = layer(dbl)
        return [
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool_same(x)),
        ]


class InceptionD(_Mixed):
    """17 -> 8 reduction (Mixed_7a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def branches(self, x):
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return [self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)]


class InceptionE(_Mixed):
    """8x8 block with split 1x3 / 3x1 outputs (Mixed_7b with an average pool, Mixed_7c with a max
    pool, as in the TF graph)."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def branches(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool_same(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return [
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1),
            torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], dim=1),
            self.branch_pool(pooled),
        ]


def tf1_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres), as in the 2015 graph.

    x: (B, C, H, W) float -> (B, C, size, size). Output pixel i samples input position
    i * (in / out), clamped at the last row/column; torch's ``interpolate`` uses half-pixel centres
    and gives different features.
    """

    def axis(in_size: int):
        scale = torch.tensor(in_size / size, dtype=torch.float32)
        pos = torch.arange(size, dtype=torch.float32) * scale
        lower = pos.floor().long().clamp(max=in_size - 1)
        upper = (lower + 1).clamp(max=in_size - 1)
        return lower.to(x.device), upper.to(x.device), (pos - lower.float()).to(x.device, x.dtype)

    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    y0, y1, ly = axis(h)
    x0, x1, lx = axis(w)
    top, bottom = x[:, :, y0], x[:, :, y1]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * lx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * lx
    return top + (bottom - top) * ly[:, None]


class FIDInceptionV3(nn.Module):
    """The TF-FID Inception-v3 (module names = the ``pt_inception-2015-12-05`` state-dict keys)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL_DIM, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (B, 3, H, W) float in [0, 255] (uint8 values), any H, W.

        Returns {"pool": (B, 2048), "spatial": (B, 2023), "logits": (B, 1008)}.
        """
        x = tf1_resize_bilinear(images.float(), INPUT_SIZE)
        x = (x - 128.0) / 128.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        parts = self.Mixed_6d.branches(x)
        spatial = parts[0][:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)  # NHWC, like TF
        x = torch.cat(parts, dim=1)
        for block in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = x.mean(dim=(2, 3))  # pool_3: 8x8 average pool
        logits = pool @ self.fc.weight.t()  # IS uses the logits without the bias
        return {"pool": pool, "spatial": spatial, "logits": logits}


def load_inception_state_dict(model: FIDInceptionV3, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy ``state_dict`` into ``model`` strictly; any mismatch raises InceptionWeightsError naming
    the missing, unexpected and wrongly shaped keys. ``num_batches_tracked`` counters (training
    bookkeeping, unused in eval mode) may be absent."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state_dict[k].shape)}, network {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the pt_inception-2015-12-05 layout:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        raise InceptionWeightsError("\n".join(lines))
    model.load_state_dict(state_dict, strict=False)


def load_inception(path: str, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """Build the network and load ``pt_inception-2015-12-05-*.pth`` (or a .safetensors with the same
    keys) from a local path; eval mode on ``device``."""
    if not path:
        raise InceptionWeightsError(
            "no Inception weights given: pass the local path of pt_inception-2015-12-05-6726825d.pth "
            "(they cannot be downloaded at run time)")
    if not os.path.isfile(path):
        raise InceptionWeightsError(f"Inception weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path)
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file
            raise InceptionWeightsError(f"cannot read Inception weights {path}: {err}") from None
    if not isinstance(state_dict, dict):
        raise InceptionWeightsError(f"{path} does not hold a state dict (got {type(state_dict).__name__})")
    model = FIDInceptionV3()
    load_inception_state_dict(model, state_dict, source=path)
    return model.eval().to(device)
