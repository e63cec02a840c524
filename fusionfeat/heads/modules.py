"""Torch heads that classify cached backbone features: an MLP, concatenation, attention fusion.

Research code only: modules and their forward passes, no devices, loops or checkpoints (those live in
``fusionfeat.heads.torch_head``). Every head reads one flat ``(B, F)`` row per image whose columns are the
per-backbone blocks laid end to end; ``blocks`` gives ``(n_tokens, dim)`` per backbone, a block being
that backbone's ``(T, C)`` token map flattened row-major (``tokens.reshape(N, T * C)``), or its pooled
vector when ``T == 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fusionfeat.errors import FusionfeatError

Blocks = tuple[tuple[int, int], ...]

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
NORMS = {"layer": nn.LayerNorm, "batch": nn.BatchNorm1d, None: None}
ATTENTION_VARIANTS = ("spatial", "pooled")


def as_blocks(blocks: Sequence[Sequence[int]]) -> Blocks:
    """Normalise ``blocks`` to a tuple of ``(n_tokens, dim)`` int pairs, both positive."""
    try:
        out = tuple((int(t), int(c)) for t, c in blocks)
    except (TypeError, ValueError):
        raise FusionfeatError(
            f"blocks must be a sequence of (n_tokens, dim) pairs, e.g. ((1, 512), (1, 512)); got {blocks!r}"
        ) from None
    if not out or any(t < 1 or c < 1 for t, c in out):
        raise FusionfeatError(f"blocks needs at least one (n_tokens, dim) pair of positive ints; got {blocks!r}")
    return out


class BlockInput(nn.Module):
    """Split a flat row into per-backbone ``(B, T, C)`` maps and standardise each channel.

    The per-channel location and scale are buffers (so they travel with the state dict), set once from
    training data by :meth:`set_stats`; until then they are the identity.
    """

    def __init__(self, blocks: Sequence[Sequence[int]]):
        super().__init__()
        self.blocks = as_blocks(blocks)
        for i, (_, c) in enumerate(self.blocks):
            self.register_buffer(f"loc_{i}", torch.zeros(c))
            self.register_buffer(f"scale_{i}", torch.ones(c))

    def set_stats(self, locs: Sequence[torch.Tensor], scales: Sequence[torch.Tensor]) -> None:
        """Set each block's per-channel mean and standard deviation (computed by the caller)."""
        for i, (loc, scale) in enumerate(zip(locs, scales, strict=True)):
            getattr(self, f"loc_{i}").copy_(torch.as_tensor(loc))
            getattr(self, f"scale_{i}").copy_(torch.as_tensor(scale))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [(block.float() - loc) / scale for block, loc, scale in self._raw(x)]

    def pooled(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's standardised token mean ``(B, C)``: the mean of :meth:`forward`'s maps, computed by
        pooling first (the standardisation is affine per channel), so a token map is read once, not three times."""
        return [(block.float().mean(dim=1) - loc) / scale for block, loc, scale in self._raw(x)]

    def _raw(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per block: its unstandardised ``(B, T, C)`` view of ``x`` (float16 rows stay float16 here), location
        and scale."""
        out, start = [], 0
        for i, (t, c) in enumerate(self.blocks):
            block = x[:, start : start + t * c].reshape(-1, t, c)
            out.append((block, getattr(self, f"loc_{i}"), getattr(self, f"scale_{i}")))
            start += t * c
        return out


class MLP(nn.Module):
    """``n_layers`` blocks of Linear → norm → activation → dropout, then a Linear to class logits.

    The paper's head: three 512-unit linear layers. ``norm`` is ``"layer"``, ``"batch"`` or ``None``.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        hidden: int = 512,
        n_layers: int = 3,
        dropout: float = 0.2,
        activation: str = "gelu",
        norm: str | None = "layer",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise FusionfeatError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
        if norm not in NORMS:
            raise FusionfeatError(f"norm must be 'layer', 'batch' or None; got {norm!r}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers):
            layers.append(nn.Linear(width, hidden))
            if norm is not None:
                layers.append(NORMS[norm](hidden))
            layers += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConcatFusion(nn.Module):
    """No-attention control: mean-pool each block over its tokens, concatenate, MLP.

    With one block this is a single-backbone head; with pooled blocks (``T == 1``) the pooling is a no-op.
    """

    def __init__(self, blocks: Sequence[Sequence[int]], n_classes: int = 2, **mlp_kwargs):
        super().__init__()
        self.inputs = BlockInput(blocks)
        self.mlp = MLP(sum(c for _, c in self.inputs.blocks), n_classes, **mlp_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat(self.inputs.pooled(x), dim=1))


def cross_attention(
    attn: nn.MultiheadAttention, query: torch.Tensor, context: torch.Tensor, explicit: bool | None = None
) -> torch.Tensor:
    """``attn(query, context, context, need_weights=False)[0]`` for a batch-first module without masks or
    attention dropout, with the same parameters. ``explicit`` (default: on the CPU) spells the softmax out as
    two batched matmuls: for the heads' 49-token sequences that trained about 13% faster on the CPU than the
    fused kernel ``nn.MultiheadAttention`` picks there; otherwise ``scaled_dot_product_attention`` runs."""
    width, n_heads = attn.embed_dim, attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    q = nn.functional.linear(query, weight[:width], None if bias is None else bias[:width])
    k, v = nn.functional.linear(context, weight[width:], None if bias is None else bias[width:]).chunk(2, dim=-1)
    b, t, s = query.shape[0], query.shape[1], context.shape[1]
    q = q.view(b, t, n_heads, -1).transpose(1, 2)
    k = k.view(b, s, n_heads, -1).transpose(1, 2)
    v = v.view(b, s, n_heads, -1).transpose(1, 2)
    if q.device.type == "cpu" if explicit is None else explicit:
        scores = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
        out = scores @ v
    else:
        out = nn.functional.scaled_dot_product_attention(q, k, v)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, width))


class AttentionFusion(nn.Module):
    """Attention fusion of two or more backbones, with a per-image softmax gate over backbones.

    ``variant="spatial"``: each backbone's token map is projected to width ``dim`` (plus a learned
    position embedding) and queries the other backbones' tokens with multi-head cross-attention;
    residual + LayerNorm, then mean-pooled to one branch vector per backbone.
    ``variant="pooled"``: each pooled vector (the token mean when ``T > 1``) is projected to ``dim``
    (plus a learned backbone embedding); self-attention over that K-token sequence, residual + LayerNorm,
    gives one branch vector per backbone.
    Both then score each branch vector, softmax the scores over backbones into fusion weights ``w``
    (``(B, K)``, rows sum to 1), and feed the concatenation of ``K * w_k * z_k`` to the MLP: uniform
    weights give plain concatenation, and a weight near 0 removes that backbone from the decision.
    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        n_classes: int = 2,
        variant: str = "spatial",
        dim: int = 128,
        n_heads: int = 4,
        dropout: float = 0.2,
        **mlp_kwargs,
    ):
        super().__init__()
        if variant not in ATTENTION_VARIANTS:
            raise FusionfeatError(f"attention variant must be one of {ATTENTION_VARIANTS}; got {variant!r}")
        if dim % n_heads:
            raise FusionfeatError(f"attention width {dim} must be divisible by the number of heads {n_heads}")
        self.inputs = BlockInput(blocks)
        self.variant = variant
        k = len(self.inputs.blocks)
        if k < 2:
            raise FusionfeatError(f"attention fusion needs at least 2 backbones; blocks has {k}")
        self.proj = nn.ModuleList(nn.Linear(c, dim) for _, c in self.inputs.blocks)
        n_attn = k if variant == "spatial" else 1
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, n_heads, batch_first=True) for _ in range(n_attn))
        self.norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_attn))
        if variant == "spatial":
            self.embed = nn.ParameterList(nn.Parameter(torch.zeros(t, dim)) for t, _ in self.inputs.blocks)
        else:
            self.embed = nn.ParameterList([nn.Parameter(torch.zeros(k, dim))])
        for p in self.embed:
            nn.init.trunc_normal_(p, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.gate = nn.Linear(dim, 1)
        self.mlp = MLP(k * dim, n_classes, dropout=dropout, **mlp_kwargs)

    def _branches(self, x: torch.Tensor) -> torch.Tensor:
        """One fused vector per backbone: ``(B, K, dim)``."""
        if self.variant == "pooled":
            seq = torch.stack([p(m) for p, m in zip(self.proj, self.inputs.pooled(x), strict=True)], dim=1)
            seq = seq + self.embed[0]
            out, _ = self.attn[0](seq, seq, seq, need_weights=False)
            return self.norm[0](seq + self.drop(out))
        seqs = [p(m) + e for p, m, e in zip(self.proj, self.inputs(x), self.embed, strict=True)]
        branches = []
        for i, query in enumerate(seqs):
            context = torch.cat(seqs[:i] + seqs[i + 1 :], dim=1)
            out = cross_attention(self.attn[i], query, context)
            branches.append(self.norm[i](query + self.drop(out)).mean(dim=1))
        return torch.stack(branches, dim=1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gated concatenation fed to the MLP ``(B, K * dim)`` and the fusion weights ``(B, K)``."""
        z = self._branches(x)
        weights = torch.softmax(self.gate(z).squeeze(-1), dim=1)
        fused = (z * weights.unsqueeze(-1) * z.shape[1]).flatten(1)
        return fused, weights

    def fusion_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image contribution of each backbone, ``(B, K)``, rows summing to 1."""
        return self.forward_features(x)[1]

    def attention_maps(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Where the cross-attention looks (``variant="spatial"`` only): backbone index k → ``(B, T_k)``.

        For each backbone k, the attention mass its tokens receive from the other branches' queries,
        averaged over attention heads and query tokens (and over the querying branches when K > 2). With
        two backbones each map sums to 1 per image. Same computation as ``forward`` (which is unchanged),
        asking ``nn.MultiheadAttention`` for its weights.
        """
        if self.variant != "spatial":
            raise FusionfeatError("attention maps need the spatial attention head (token grids); this one is pooled")
        maps = self.inputs(x)
        seqs = [p(m) + e for p, m, e in zip(self.proj, maps, self.embed, strict=True)]
        sizes = [s.shape[1] for s in seqs]
        received: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(seqs))}
        for i, query in enumerate(seqs):
            context = torch.cat(seqs[:i] + seqs[i + 1 :], dim=1)
            _, weights = self.attn[i](query, context, context, need_weights=True, average_attn_weights=True)
            mass = weights.mean(dim=1)  # (B, sum of the other branches' T), over query tokens
            others = [k for k in range(len(seqs)) if k != i]
            for k, part in zip(others, torch.split(mass, [sizes[k] for k in others], dim=1), strict=True):
                received[k].append(part)
        return {k: torch.stack(parts).mean(dim=0) for k, parts in received.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.forward_features(x)[0])
