"""Where DeepSpeed ZeRO keeps the fp32 master weights: one flat float32 share per rank and group.

Every ZeRO optimizer holds, on each data-parallel rank and for each parameter group, one flat
float32 tensor with that rank's share of the master weights (all ranks' shares have the same size).
Concatenating the shares in rank order gives a "group space" in which each parameter occupies
fixed ranges:

- ZeRO-1/2 (``DeepSpeedZeroOptimizer``, and ``BF16_Optimizer`` that DeepSpeed picks for ZeRO-1
  with bf16 and fp32 gradient accumulation): the group's parameters lie end to end in one flat
  low-precision buffer (with alignment padding) that is cut into equal shares, so a parameter is
  one range, at its offset in that buffer.
- ZeRO-3: every parameter is cut into ``world_size`` equal pieces (the last one padded) and a
  rank's share is its pieces of the group's parameters end to end, so a parameter is one range
  per rank.

:class:`MasterLayout` records the ranges once. :meth:`MasterLayout.shares` gives this rank's
shares with no communication; :meth:`MasterLayout.gather` rebuilds full tensors from per-rank
flat tensors shaped like the shares with one all-gather per group (instead of DeepSpeed's
``safe_get_full_fp32_param``, one collective per parameter); :meth:`MasterLayout.scatter` cuts a
full state dict into this rank's shares. The Adam moments of the shares (:meth:`moment_shares`)
have the same layout, so the consolidated checkpoint gathers them the same way.

This module is the one place that reads DeepSpeed's private optimizer fields (the flat shares and
their groups, ZeRO-3's ``grad_position``, the ZeRO-1/2 state-linking hook). DeepSpeed's public
``safe_get_full_*`` API gives the same values but costs one collective per parameter;
tests/training/master_weights_worker.py checks every value against that API for each ZeRO stage,
so it fails when a DeepSpeed upgrade changes these internals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

# ZeRO-1/2 optimizers: (attribute of the fp32 shares, of the parameter groups, of their flat buffers)
_ZERO12_KINDS = (("single_partition_of_fp32_groups", "bit16_groups", "bit16_groups_flat"),  # ZeRO-1/2
                 ("fp32_groups_flat_partition", "bf16_groups", "bf16_groups_flat"))  # BF16_Optimizer
_ZERO3_SHARES = "fp32_partitioned_groups_flat"
GATHER_CHUNK = 1 << 24  # elements per rank and gather: 64 MiB of float32
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class ParamRanges:
    """One parameter's place in its group space: ``ranges`` of (start, length), concatenated in
    order, hold its ``numel(shape)`` values."""

    name: str
    shape: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class GroupLayout:
    """One parameter group: the size of each rank's share and where its parameters lie."""

    share: int  # elements per rank
    params: tuple[ParamRanges, ...]


class MasterLayout:
    """The fp32 master-weight layout of a DeepSpeed ZeRO engine (stages 1, 2 and 3)."""

    def __init__(self, engine):
        self.optimizer = engine.optimizer
        self.group = self.optimizer.dp_process_group
        self.world_size = dist.get_world_size(group=self.group)
        self.rank = dist.get_rank(group=self.group)
        self.device = engine.device  # where collectives run (the accelerator; CPU under gloo)
        names = {id(p): n for n, p in engine.module.named_parameters()}
        if hasattr(self.optimizer, _ZERO3_SHARES):
            if getattr(self.optimizer, "swap_optimizer", False):
                raise NotImplementedError("the EMA reads the fp32 master shares in memory; ZeRO-3 with the "
                                          "optimizer offloaded to NVMe keeps them on disk")
            self.shares_attr = _ZERO3_SHARES
            self.groups = self._zero3_groups(names)
        else:
            kind = next((k for k in _ZERO12_KINDS if hasattr(self.optimizer, k[0])), None)
            if kind is None:
                raise TypeError(f"{type(self.optimizer).__name__} keeps no fp32 master shares that the EMA "
                                "knows; it needs a DeepSpeed ZeRO optimizer (engine.zero_stage 1, 2 or 3)")
            self.shares_attr = kind[0]
            self.groups = self._zero12_groups(names, getattr(self.optimizer, kind[1]),
                                              getattr(self.optimizer, kind[2]))
        placed = [p.name for g in self.groups for p in g.params]
        trainable = sorted(n for n, p in engine.module.named_parameters() if p.requires_grad)
        if sorted(placed) != trainable:
            missing = sorted(set(trainable) - set(placed))
            raise RuntimeError(f"the optimizer's fp32 shares do not hold every trainable parameter exactly "
                               f"once (missing e.g. {missing[:3]})")

    def _zero12_groups(self, names, param_groups, flats) -> list[GroupLayout]:
        groups = []
        for i, (params, flat) in enumerate(zip(param_groups, flats)):
            layout = []
            for p in params:
                # The optimizer made each parameter a view of the group's flat buffer.
                offset = (p.data_ptr() - flat.data_ptr()) // p.element_size()
                layout.append(ParamRanges(names[id(p)], tuple(p.shape), ((offset, p.numel()),)))
            groups.append(GroupLayout(self.shares()[i].numel(), tuple(layout)))
        return groups

    def _zero3_groups(self, names) -> list[GroupLayout]:
        opt = self.optimizer
        groups = []
        for i, params in enumerate(opt.fp16_groups):
            share = self.shares()[i].numel()
            layout = []
            for p in params:
                _, dest, piece = opt.grad_position[opt.get_param_id(p)]  # offset and size of its piece
                ranges = tuple((r * share + dest, min(piece, p.ds_numel - r * piece))
                               for r in range(self.world_size) if p.ds_numel > r * piece)
                layout.append(ParamRanges(names[id(p)], tuple(p.ds_shape), ranges))
            groups.append(GroupLayout(share, tuple(layout)))
        return groups

    def shares(self) -> list[torch.Tensor]:
        """This rank's fp32 master shares, one flat tensor per group (the optimizer's own tensors:
        read, don't write)."""
        return list(getattr(self.optimizer, self.shares_attr))

    # ---- the Adam state of the shares ------------------------------------------------------------
    def inner_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer inside DeepSpeed's ZeRO / bf16 wrapper (it steps the flat shares)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def link_optimizer_state(self) -> None:
        """Give every share its Adam state and make DeepSpeed's per-parameter views see it.

        torch's AdamW creates its state at the first step, so a fresh engine has none; DeepSpeed
        0.19's ZeRO-1/2 optimizers moreover link the parameters' fragments to the state once,
        after the first parameter group's first step, leaving later groups (here: A_log / D
        without weight decay) unlinked. Create AdamW's state where it is missing (zero moments,
        as AdamW would) and link again.
        """
        inner = self.inner_optimizer()
        for flat in self.shares():
            if not inner.state.get(flat):
                inner.state[flat] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                     "exp_avg_sq": torch.zeros_like(flat)}
        if hasattr(self.optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2 (ZeRO-3 looks states up)
            self.optimizer._hp_optimizer_states_linked = False
            self.optimizer._lazy_init_hp_params_optimizer_state()

    def moment_shares(self, key: str) -> list[torch.Tensor]:
        """This rank's shares of Adam state ``key`` (``exp_avg`` / ``exp_avg_sq``), shaped like
        :meth:`shares`; call :meth:`link_optimizer_state` first."""
        if key not in MOMENTS:
            raise KeyError(f"{key}: not one of the Adam moments {MOMENTS}")
        state = self.inner_optimizer().state
        return [state[flat][key] for flat in self.shares()]

    def step_count(self) -> float:
        """AdamW's step counter (the same in every group)."""
        for state in self.inner_optimizer().state.values():
            if "step" in state:
                return float(state["step"])
        return 0.0

    def set_step_count(self, count: float) -> None:
        for state in self.inner_optimizer().state.values():
            if "step" in state:
                if torch.is_tensor(state["step"]):
                    state["step"].fill_(count)
                else:
                    state["step"] = count

    @torch.no_grad()
    def gather(self, shares: list[torch.Tensor], dst: int = 0,
               chunk: int = GATHER_CHUNK) -> dict[str, torch.Tensor]:
        """Full float32 CPU tensors by parameter name from every rank's ``shares`` (flat, shaped
        like :meth:`shares`), on rank ``dst`` of the group only (``{}`` elsewhere); a collective.

        The shares travel in pieces of ``chunk`` elements per rank (one gather each), so the
        accelerator holds at most ``world_size * chunk`` extra floats on ``dst`` and nothing extra
        elsewhere; the full tensors exist once, in ``dst``'s host memory.
        """
        out = {}
        mine = self.rank == dst
        dst_global = dist.get_global_rank(self.group, dst)
        for layout, share in zip(self.groups, shares):
            space = torch.empty(layout.share * self.world_size, dtype=torch.float32) if mine else None
            for start in range(0, layout.share, chunk):
                n = min(chunk, layout.share - start)
                piece = share.detach()[start:start + n].to(self.device, torch.float32).contiguous()
                if not mine:
                    dist.gather(piece, None, dst=dst_global, group=self.group)
                    continue
                slots = [space[r * layout.share + start:][:n] for r in range(self.world_size)]
                on_host = self.device.type == "cpu"  # gloo receives straight into the host buffer
                received = slots if on_host else [torch.empty_like(piece) for _ in slots]
                dist.gather(piece, received, dst=dst_global, group=self.group)
                if not on_host:
                    for slot, value in zip(slots, received):
                        slot.copy_(value)
            if mine:
                for p in layout.params:
                    out[p.name] = torch.cat([space[start:start + n] for start, n in p.ranges]).view(p.shape)
        return out

    @torch.no_grad()
    def scatter(self, state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """This rank's flat float32 shares of the full tensors in ``state`` (no communication)."""
        shares = []
        for layout in self.groups:
            space = torch.zeros(layout.share * self.world_size, dtype=torch.float32)
            for p in layout.params:
                if p.name not in state:
                    raise KeyError(f"no tensor for parameter {p.name}")
                value = state[p.name].detach().reshape(-1).to("cpu", torch.float32)
                if value.numel() != math.prod(p.shape):
                    raise ValueError(f"parameter {p.name}: {value.numel()} values for shape {list(p.shape)}")
                start_in_value = 0
                for start, n in p.ranges:
                    space[start:start + n] = value[start_in_value:start_in_value + n]
                    start_in_value += n
            shares.append(space[self.rank * layout.share:(self.rank + 1) * layout.share].clone())
        return shares
