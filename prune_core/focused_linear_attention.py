"""FLatten's focused linear attention, prunable (docs/method.md §3, §6).

Focused linear attention (Han et al., FLatten Transformer, ICCV 2023; the official code's
``FocusedLinearAttention``): φ(x) = f_p((ReLU(x) + ε) / softplus(s)), where the focusing
function f_p raises to the power p and restores each token's norm; the map φ(Q)φ(K)ᵀ is
row-normalised, and a depthwise conv over v on the token grid is added to the output.

The focusing norm runs over all C channels, so when qk channels are masked the norms of both
φ(q) and φ(k) are taken over the kept channels only (the pruned layer's norms), while k's
dropped channels keep their values and meet the zeros of masked q. The depthwise conv has
``head_dim`` channels shared by all heads, so the ``v`` gate here is *aligned* (the same kept
positions in every head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prune_core.attention import PrunableAttention
from prune_core.prunable import MacValue, flat_index, mac_value


class FocusedLinearAttention(PrunableAttention):
    """FLatten's focused linear attention (Han et al., ICCV 2023), prunable.

    φ(x) = ReLU(x) + 1e-6, divided by softplus(scale); the focusing power p is applied with each
    token's norm over all C channels restored. k gets a learnable positional encoding, and a
    depthwise conv (head_dim channels, shared by heads) on v is added to the output. The
    focusing norms of q and k run over the kept channels only and the mask then zeroes q's
    dropped channels, so the masked model equals the pruned one (module doc). The qk reweight
    multiplies q's and k's features together, i.e. it divides softplus(scale), and folds into
    ``scale`` at surgery; it is stored as log r so that fold cannot fail.
    """

    no_weight_decay_names = ("scale", "positional_encoding")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        tokens: int,
        grid: tuple[int, int],
        *,
        qkv_bias: bool = True,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        head = dim // num_heads
        super().__init__(
            dim,
            num_heads,
            head,
            head,
            qkv_bias=qkv_bias,
            v_aligned=True,
            positive_qk_reweight=True,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )
        if grid[0] * grid[1] != tokens:
            raise ValueError(f"grid {grid} does not hold {tokens} tokens")
        self.tokens = tokens
        self.grid = grid
        self.focusing_factor = focusing_factor
        self.kernel_size = kernel_size
        self.scale = nn.Parameter(torch.zeros(1, 1, num_heads * head))
        self.positional_encoding = nn.Parameter(torch.zeros(1, tokens, num_heads * head))
        self.dwc = nn.Conv2d(head, head, kernel_size, padding=kernel_size // 2, groups=head)

    def _focus(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """x^p with each token's norm restored, both norms over the ``keep`` channels (1, 1, C).

        Kept channels come out exactly as in the pruned layer; dropped ones keep a value.
        """
        norm = (x if keep is None else x * keep).norm(dim=-1, keepdim=True)
        xp = x**self.focusing_factor
        return xp / (xp if keep is None else xp * keep).norm(dim=-1, keepdim=True) * norm

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``mask`` (Swin's shift mask) is accepted and ignored, as in FLatten's own code."""
        B, N, _ = x.shape
        H, dq, dv = self.num_heads, self.qk_dim, self.v_dim
        q, k, v = self._split(x)
        k = k + self.positional_encoding
        self._record(
            q=q.view(B, N, H, dq).transpose(1, 2),
            k=k.view(B, N, H, dq).transpose(1, 2),
            v=v.view(B, N, H, dv).transpose(1, 2),
        )
        divisor = F.softplus(self.scale)
        q = (F.relu(q) + 1e-6) / divisor
        k = (F.relu(k) + 1e-6) / divisor
        r = self.qk_reweight().reshape(1, 1, H * dq)
        m_qk = self.gates["qk"]()
        keep = None if m_qk is None else m_qk.detach().reshape(1, 1, H * dq)
        q, k = self._focus(q * r, keep), self._focus(k * r, keep)
        if m_qk is not None:  # q only, after the focus: linear in m (module doc)
            q = q * m_qk.reshape(1, 1, H * dq)
        m_v = self.gates["v"]()
        v = v * self._v_multiplier().reshape(1, 1, H * dv)
        q = q.view(B, N, H, dq).transpose(1, 2)
        k = k.view(B, N, H, dq).transpose(1, 2)
        v = v.view(B, N, H, dv).transpose(1, 2)
        self._record(phi_q=q, phi_k=k)
        # Normaliser as in the official code: q·mean(k) (+ε), the product scaled by 1/N.
        z = 1.0 / (q @ k.mean(dim=2, keepdim=True).transpose(-2, -1) + 1e-6)  # (B, H, N, 1)
        if self._kv_first(N):
            out = (q @ ((k.transpose(-2, -1) / N) @ v)) * z
        else:
            out = ((q @ k.transpose(-2, -1)) @ v) * (z / N)
        fmap = v.reshape(B * H, self.grid[0], self.grid[1], dv).permute(0, 3, 1, 2)
        fmap = self.dwc(fmap).permute(0, 2, 3, 1).reshape(B, H, N, dv)
        if m_v is not None:  # the conv's bias would otherwise revive masked channels
            fmap = fmap * m_v[:, None, :]
        out = (out + fmap).transpose(1, 2).reshape(B, N, H * dv)
        return self.proj_drop(self.proj(out))

    def _kv_first(
        self, tokens: int, dq: MacValue | None = None, dv: MacValue | None = None
    ) -> bool:
        """Q(KᵀV) costs 2·N·dq·dv, (QKᵀ)V costs N²·(dq + dv): take the cheaper order."""
        dq = self.qk_dim if dq is None else dq
        dv = self.v_dim if dv is None else dv
        return bool(2 * tokens * dq * dv <= tokens * tokens * (dq + dv))

    def macs(self, widths: dict[str, MacValue], tokens: int, batch: int = 1) -> MacValue:
        H, C, N = self.num_heads, self.dim, tokens
        kq, kv = widths["qk"], widths["v"]
        # The order is chosen on the *integer* widths the pruned layer will have.
        kv_first = self._kv_first(N, round(mac_value(kq)), round(mac_value(kv)))
        core = 2 * N * kq * kv if kv_first else N * N * (kq + kv)
        per_sequence = (
            N * C * H * (2 * kq + kv)  # qkv projection
            + N * H * kq  # normaliser z = q · Σk
            + H * core  # attention product
            + N * H * kv * self.kernel_size**2  # depthwise conv on v
            + N * H * kv * C
        )  # output projection
        return batch * per_sequence

    def shrink_(self, kept: dict[str, list[list[int]]]) -> None:
        qk_idx = flat_index(kept["qk"], self.qk_dim)
        v_pos = torch.tensor(kept["v"][0], dtype=torch.long)
        self._shrink_projections(kept)
        self.scale = nn.Parameter(self.scale.detach()[..., qk_idx].clone())
        self.positional_encoding = nn.Parameter(
            self.positional_encoding.detach()[..., qk_idx].clone()
        )
        conv = nn.Conv2d(
            len(v_pos),
            len(v_pos),
            self.kernel_size,
            padding=self.kernel_size // 2,
            groups=len(v_pos),
        )
        conv = conv.to(self.dwc.weight)
        with torch.no_grad():
            conv.weight.copy_(self.dwc.weight[v_pos])
            conv.bias.copy_(self.dwc.bias[v_pos])
        self.dwc = conv

    def fold_reweight_(self) -> None:
        """φ·r = (ReLU+ε)/(softplus(scale)/r): fold r into scale via softplus⁻¹."""
        r = self.qk_reweight.take_().reshape(1, 1, -1)  # exp(log r) > 0: always foldable
        with torch.no_grad():
            target = F.softplus(self.scale.double()) / r.double().clamp_min(1e-30)
            self.scale.copy_(target + torch.log(-torch.expm1(-target)))  # softplus⁻¹
        self._fold_v_reweight_()
