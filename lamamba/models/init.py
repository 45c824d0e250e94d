"""The AdaLN-Zero initialisation shared by LaMamba-Diff and DiT (DiT's ``initialize_weights``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

from lamamba.models.embeddings import LabelEmbedder, TimestepEmbedder


def adaln_zero_init(model: nn.Module, patch_embed: nn.Conv2d, t_embedder: TimestepEmbedder,
                    y_embedder: LabelEmbedder, modulations: Iterable[nn.Linear],
                    final_linear: nn.Linear | None = None) -> None:
    """Xavier-uniform on every Linear (bias 0) and on the patch embedding's flattened kernel; the
    label table and the timestep MLP's weights normal(0, 0.02); each adaLN modulation's last Linear
    zero, so every block starts as the identity; ``final_linear`` zero too when given (DiT)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    w = patch_embed.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(patch_embed.bias)
    nn.init.normal_(y_embedder.table.weight, std=0.02)
    nn.init.normal_(t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(t_embedder.mlp[2].weight, std=0.02)
    for linear in modulations:
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
    if final_linear is not None:
        nn.init.zeros_(final_linear.weight)
        nn.init.zeros_(final_linear.bias)
