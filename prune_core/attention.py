"""Prunable attention: the shared q/k/v base and softmax attention (docs/method.md §3, §6).

Shapes: ``x`` is (B, N, C); q/k have ``qk_dim`` channels per head, v has ``v_dim``. The two
widths are separate pruning decisions, so the fused ``qkv`` linear is laid out as
[q (H·qk_dim) | k (H·qk_dim) | v (H·v_dim)].

**Where the qk mask goes.** A qk channel c enters the map only through the product q_c·k_c, so
masking q alone removes it exactly (k_c then only ever meets a zero). Masking both sides, as a
first version did, makes the loss go as m² (m³ after FLatten's focusing power), whose gradient
is zero at m = 0: a dropped channel could never earn its way back. With the mask on q only, the
loss is linear in m and a dropped channel gets the task gradient of putting it back
(docs/method.md, "One-sided qk mask"). FLatten's focused linear attention, on the same base
class, is in ``focused_linear_attention.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prune_core.indicator import ChannelGate
from prune_core.prunable import (
    MacValue,
    PrunableModule,
    check_kept,
    flat_index,
    shrink_gate,
    slice_cols,
    slice_rows,
)
from prune_core.reweight import Reweight, upgrade_state_dict


class PrunableAttention(PrunableModule):
    """Shared parts of softmax and focused linear attention: projections, gates, reweights."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_dim: int,
        v_dim: int,
        *,
        qkv_bias: bool,
        proj_bias: bool = True,
        v_aligned: bool = False,
        positive_qk_reweight: bool = False,
        qk_prunable: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.qk_dim = qk_dim
        self.v_dim = v_dim
        self.qkv = nn.Linear(dim, num_heads * (2 * qk_dim + v_dim), bias=qkv_bias)
        self.proj = nn.Linear(num_heads * v_dim, dim, bias=proj_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        # qk_prunable=False: a layer that transforms q/k over the whole head before q·kᵀ
        # (qk-norm, cosine attention, rotary pairs) cannot lose a qk channel exactly, so it
        # has no qk gate and no qk reweight: q/k keep their full width, v and MLP are pruned.
        gates = {"v": ChannelGate(num_heads, v_dim, aligned=v_aligned)}
        if qk_prunable:
            gates = {"qk": ChannelGate(num_heads, qk_dim), **gates}
        self.gates = nn.ModuleDict(gates)
        # Reweight modules (idea 3): per-head, per-channel scales on kept channels, learned in
        # search and fine-tune to compensate what removed channels carried; folded at surgery.
        if qk_prunable:
            self.qk_reweight = Reweight(num_heads, qk_dim, positive=positive_qk_reweight)
        self.v_reweight = Reweight(num_heads, v_dim)

    @property
    def qk_prunable(self) -> bool:
        return "qk" in self.gates

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("qk_reweight", "v_reweight"):  # v0.1 checkpoints: a bare parameter
            if hasattr(self, name):
                upgrade_state_dict(getattr(self, name), state_dict, prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def head_dim(self) -> int:  # timm attribute name, for code that reads it
        return self.qk_dim

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, C) -> q, k (B, N, H·qk_dim), v (B, N, H·v_dim), before any mask."""
        hq = self.num_heads * self.qk_dim
        return self.qkv(x).split([hq, hq, self.num_heads * self.v_dim], dim=-1)

    def _record(self, **groups: Tensor | None) -> None:
        if self.tap is not None:
            for name, value in groups.items():
                if value is not None:
                    self.tap[name] = value.detach()

    def _qk_multiplier(self) -> Tensor | None:
        """(H, qk_dim) multiplier of q: reweight (× sqrt(d/k) if on) × straight-through mask;
        None when the qk group is not prunable (q is used as it is)."""
        if not self.qk_prunable:
            return None
        gate = self.gates["qk"]
        m = gate()
        kept = gate.kept_per_head() if self.qk_reweight.width_compensation else None
        r = self.qk_reweight(kept)
        return r if m is None else r * m

    def _v_multiplier(self) -> Tensor:
        m = self.gates["v"]()
        r = self.v_reweight()
        return r if m is None else r * m

    def _shrink_projections(self, kept: dict[str, list[list[int]]]) -> None:
        if not self.qk_prunable:  # every q/k channel stays (see __init__)
            kept = {**kept, "qk": [list(range(self.qk_dim))] * self.num_heads}
        check_kept("qk", kept["qk"], self.num_heads, self.qk_dim, False)
        check_kept("v", kept["v"], self.num_heads, self.v_dim, self.gates["v"].aligned)
        hq = self.num_heads * self.qk_dim
        q_idx = flat_index(kept["qk"], self.qk_dim)
        k_idx = flat_index(kept["qk"], self.qk_dim, offset=hq)
        v_idx = flat_index(kept["v"], self.v_dim, offset=2 * hq)
        slice_rows(self.qkv, torch.cat([q_idx, k_idx, v_idx]))
        slice_cols(self.proj, flat_index(kept["v"], self.v_dim))
        for name, gate in self.gates.items():
            getattr(self, f"{name}_reweight").shrink_(kept[name])
            shrink_gate(gate, kept[name])
        self.qk_dim = len(kept["qk"][0])
        self.v_dim = len(kept["v"][0])

    def _fold_v_reweight_(self) -> None:
        """v·r = (r ⊙ W_v) x + r ⊙ b_v, so the v reweight folds into W_v's rows exactly."""
        hq = self.num_heads * self.qk_dim
        r = self.v_reweight.take_().reshape(-1)
        with torch.no_grad():
            self.qkv.weight[2 * hq :] *= r[:, None]
            if self.qkv.bias is not None:
                self.qkv.bias[2 * hq :] *= r


class SoftmaxAttention(PrunableAttention):
    """Multi-head softmax attention (timm ViT ``Attention`` / Swin ``WindowAttention``).

    With ``window_size`` set it carries Swin's relative position bias and accepts Swin's shift
    mask in ``forward(x, mask)``; otherwise it is plain global attention.
    """

    no_weight_decay_names = ("relative_position_bias_table",)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qk_dim: int | None = None,
        v_dim: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        scale: float | None = None,
        window_size: tuple[int, int] | None = None,
        qk_prunable: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        head = dim // num_heads
        super().__init__(
            dim,
            num_heads,
            qk_dim or head,
            v_dim or head,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            qk_prunable=qk_prunable,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )
        # The softmax temperature is a property of the trained model, not of the width: it is
        # kept when channels go (the qk reweight learns any compensation, and can start at
        # sqrt(d / k): ``qk_reweight.width_compensation``).
        self.scale = scale if scale is not None else self.qk_dim**-0.5
        self.window_size = window_size
        if window_size is not None:
            wh, ww = window_size
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads)
            )
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # as Swin
            self.register_buffer(
                "relative_position_index", _relative_index(wh, ww), persistent=False
            )

    def set_window_size(self, window_size: tuple[int, int]) -> None:
        """timm's Swin ``set_input_size`` calls this; a prunable layer keeps its window."""
        if tuple(window_size) != tuple(self.window_size or ()):
            raise ValueError(
                "change the input size (set_input_size) before make_prunable: "
                f"this prunable window attention is fixed at {self.window_size}"
            )

    def _position_bias(self) -> Tensor:
        """(1, H, n, n) Swin relative position bias over a window of n tokens."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)

    def _transform_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """What a family does to q, k (B, H, N, d) before q·kᵀ (norms, rotary); none here."""
        return q, k

    def _attn_bias(self, batch: int, tokens: int, mask: Tensor | None) -> Tensor | None:
        """The additive bias of the scores: window position bias (+ Swin's shift mask)."""
        if self.window_size is None:
            return None
        bias = self._position_bias()  # (1, H, N, N)
        if mask is not None:
            windows = mask.shape[0]
            mask = mask.view(1, windows, 1, tokens, tokens)
            bias = (bias.unsqueeze(1) + mask).expand(batch // windows, -1, -1, -1, -1)
            bias = bias.reshape(-1, self.num_heads, tokens, tokens)
        return bias

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attend(x, mask)[0]

    def attend(
        self, x: Tensor, mask: Tensor | None = None, *, weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """The attention's output (B, N, C) and, with ``weights``, its attention probabilities
        (B, H, N, N), after dropout, as ``transformers``' eager attention returns them (the
        explicit softmax then runs on CUDA too); None without ``weights``."""
        B, N, _ = x.shape
        H = self.num_heads
        q, k, v = self._split(x)
        q = q.view(B, N, H, self.qk_dim).transpose(1, 2)
        k = k.view(B, N, H, self.qk_dim).transpose(1, 2)
        v = v.view(B, N, H, self.v_dim).transpose(1, 2)
        q, k = self._transform_qk(q, k)
        self._record(q=q, k=k, v=v)
        qk_multiplier = self._qk_multiplier()
        if qk_multiplier is not None:  # q only: module doc (one-sided qk mask)
            q = q * qk_multiplier[:, None, :]
        v = v * self._v_multiplier()[:, None, :]
        bias = self._attn_bias(B, N, mask)
        self._record(attn_bias=bias)  # the map the layer computes includes it (init)
        attn = None
        if q.is_cuda and not weights:  # fused kernels; on CPU the explicit form is as fast
            # and torch's FlopCounterMode does not count CPU SDPA: explicit keeps MACs honest
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=drop, scale=self.scale
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            out = attn @ v
        out = out.transpose(1, 2).reshape(B, N, H * self.v_dim)
        return self.proj_drop(self.proj(out)), attn if weights else None

    def macs(self, widths: dict[str, MacValue], tokens: int, batch: int = 1) -> MacValue:
        H, C, N = self.num_heads, self.dim, tokens
        kq, kv = widths.get("qk", self.qk_dim), widths["v"]
        per_sequence = (
            N * C * H * (2 * kq + kv)  # qkv projection
            + N * N * H * kq  # q kᵀ
            + N * N * H * kv  # attn · v
            + N * H * kv * C
        )  # output projection
        return batch * per_sequence

    def shrink_(self, kept: dict[str, list[list[int]]]) -> None:
        self._shrink_projections(kept)

    def fold_reweight_(self) -> None:
        """q·r enters q kᵀ linearly, so the qk reweight folds into W_q's rows exactly."""
        if not self.qk_prunable:  # no qk reweight (q is transformed before q·kᵀ)
            self._fold_v_reweight_()
            return
        hq = self.num_heads * self.qk_dim
        r = self.qk_reweight.take_(self.gates["qk"].kept_per_head()).reshape(-1)
        with torch.no_grad():
            self.qkv.weight[:hq] *= r[:, None]
            if self.qkv.bias is not None:
                self.qkv.bias[:hq] *= r
        self._fold_v_reweight_()


def _relative_index(wh: int, ww: int) -> Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    return rel.sum(-1)


def attention_modules(model: nn.Module) -> dict[str, PrunableAttention]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PrunableAttention)}


__all__ = ["PrunableAttention", "SoftmaxAttention", "attention_modules"]
