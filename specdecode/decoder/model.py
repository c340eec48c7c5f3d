"""A small Llama-style decoder in plain PyTorch, with a static KV cache addressed by positions.

Follows gpt-fast (preallocated cache, position-tensor addressing, logits for every position)
and Meta's llama reference (RMSNorm, RoPE, SwiGLU, grouped-query attention). What it adds for
speculative decoding:

- every row of a batch has its own positions (``input_pos [B, T]``), so rows that accepted
  different numbers of draft tokens can share one batch, and rolling a row back is just
  moving its length back: stale cache entries beyond a row's position are masked out and
  later overwritten;
- the attention mask is built from positions (key position ``<=`` query position), so a
  multi-token step at a non-zero offset (the verify step) is correct — the square-mask bug of
  meta-llama/llama#494 cannot happen;
- the cache is plain tensors with the batch in dim 0 (``KVCache.tensors()``), so Speculative
  Rejection can compact survivors in place and copy a prefilled prompt to many rows;
- tree attention (``TreeAttention``): one forward verifies a whole token tree -- each node
  attends to the cache before the tree and to its own ancestors, at RoPE position = its depth
  -- and ``KVCache.move_positions_`` then keeps the accepted path at consecutive positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specdecode.decoder.tokenizer import PAD_ID, VOCAB_SIZE


@dataclass
class ModelConfig:
    vocab_size: int = VOCAB_SIZE  # 256 bytes + BOS/EOS/PAD (specdecode.decoder.tokenizer)
    n_layers: int = 4
    dim: int = 256
    n_heads: int = 8
    n_kv_heads: int = 2  # grouped-query attention: n_heads // n_kv_heads query heads share a K/V head
    hidden_dim: int = 0  # SwiGLU width; 0 = llama's rule, 2/3 of 4*dim rounded up to a multiple of 32
    max_seq_len: int = 1024  # length of the RoPE tables, the longest position the model can address
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"dim ({self.dim}) must divide by n_heads ({self.n_heads}), "
                f"and n_heads by n_kv_heads ({self.n_kv_heads})"
            )
        if self.hidden_dim == 0:
            self.hidden_dim = -(-(2 * 4 * self.dim // 3) // 32) * 32

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Preallocated keys and values: per layer ``[batch, max_seq_len, n_kv_heads, head_dim]``.

    Rows ``0..B-1`` serve a forward pass of batch ``B``, so after compacting survivors into the
    first rows a smaller batch just keeps going. ``lengths [batch]`` (int64) is the number of
    valid positions of each row; the model reads it as the default start position but never
    changes it — the caller advances it after accepting tokens and moves it back to roll back
    (the decoders do so through ``specdecode.decoder.state.DecodeState``).
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ):
        shape = (batch_size, max_seq_len, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths = torch.zeros(batch_size, dtype=torch.int64, device=device)

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_seq_len(self) -> int:
        return self.k[0].shape[1]

    def tensors(self) -> list[Tensor]:
        """Every cache tensor (batch in dim 0), for in-place compaction. ``lengths`` is
        per-row state too: compact it along with these."""
        return [*self.k, *self.v]

    def bytes_per_token(self) -> int:
        """KV bytes one position of one row occupies (all layers, K and V)."""
        return sum(t[0, 0].numel() * t.element_size() for t in self.tensors())

    def copy_rows_(self, src_rows: Tensor, dst_rows: Tensor, length: int | None = None) -> None:
        """``row dst_rows[i] <- row src_rows[i]`` for the first ``length`` positions (all if None),
        and its length. One prompt prefilled once can so be shared by its N candidates."""
        end = self.max_seq_len if length is None else length
        for t in self.tensors():
            t[dst_rows, :end] = t[src_rows, :end]
        self.lengths[dst_rows] = self.lengths[src_rows]

    def move_positions_(self, src: Tensor, dst: Tensor) -> None:
        """Per row, in place: position ``dst[b, i]`` <- position ``src[b, i]`` (``[B, W]`` int64,
        rows ``0..B-1``), every layer's K and V. All sources are read before anything is written, so
        overlapping moves are safe; ``src == dst`` is a no-op entry (fixed shapes, no host sync).
        Used to keep a verified tree's accepted path at consecutive positions: each row moves
        different positions, which one index set along the sequence (``compact_kv_cache_``)
        cannot express without a call per row and a host sync."""
        rows = torch.arange(src.shape[0], device=src.device)[:, None]
        for t in self.tensors():
            t[rows, dst] = t[rows, src]


@dataclass(frozen=True)
class TreeAttention:
    """Where the tokens of one forward sit in a token tree laid out in the cache, and what they see.

    Row ``b``'s tree has nodes ``0..N-1``: node 0 is the root (the row's last committed token),
    every other node's parent has a smaller index. Node ``i`` lives at cache position
    ``start[b] + i`` and is rotated by RoPE as position ``start[b] + depths[b, i]`` -- where it
    would sit if its path were the text. It attends to every cache position before ``start[b]``
    (the committed prefix) and to the positions of its ancestors and itself, so siblings never
    see each other and a node's K/V equals what a plain forward of its path would compute.

    ``start [B]`` int64; ``depths [B, N]`` int64 (root 0); ``ancestors [B, N, N]`` bool
    (``ancestors[b, i, j]``: node ``j`` is node ``i`` or one of its ancestors); ``nodes [B, T]``
    int64: which nodes this forward's ``T`` tokens are (the target verifies all of them at once;
    the draft feeds one level of its tree at a time, the earlier levels already in the cache).
    """

    start: Tensor
    depths: Tensor
    ancestors: Tensor
    nodes: Tensor

    def slots(self) -> Tensor:
        """``[B, T]`` cache positions the fed tokens' K/V are written to."""
        return self.start[:, None] + self.nodes

    def positions(self) -> Tensor:
        """``[B, T]`` RoPE positions of the fed tokens."""
        return self.start[:, None] + self.depths.gather(1, self.nodes)

    def mask(self, cache_len: int) -> Tensor:
        """``[B, 1, T, cache_len]`` bool: the committed prefix, plus each fed node's ancestors and itself."""
        B, T = self.nodes.shape
        N = self.depths.shape[1]
        offset = torch.arange(cache_len, device=self.start.device)[None, :] - self.start[:, None]  # (B, S)
        sees_node = self.ancestors.gather(1, self.nodes[:, :, None].expand(B, T, N))  # (B, T, N)
        in_tree = (offset >= 0) & (offset < N)
        sees_key = sees_node.gather(2, offset.clamp(0, N - 1)[:, None, :].expand(B, T, cache_len))
        return ((offset < 0)[:, None, :] | (sees_key & in_tree[:, None, :]))[:, None]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(config: ModelConfig) -> tuple[Tensor, Tensor]:
    """cos and sin, ``[max_seq_len, head_dim // 2]`` float32, for the rotate-half RoPE form."""
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(half, dtype=torch.float64) / half))
    angles = torch.arange(config.max_seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, T, H, D]`` by its positions; ``cos``/``sin`` are ``[B, T, 1, D/2]``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        kv_dim = config.n_kv_heads * config.head_dim
        self.wqkv = nn.Linear(config.dim, config.dim + 2 * kv_dim, bias=False)  # fused, split below
        self.wo = nn.Linear(config.dim, config.dim, bias=False)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        input_pos: Tensor,
        cache_k: Tensor | None,
        cache_v: Tensor | None,
    ) -> Tensor:
        B, T, C = x.shape
        n_qk_heads = self.n_heads + self.n_kv_heads
        qk, v = self.wqkv(x).split([n_qk_heads * self.head_dim, self.n_kv_heads * self.head_dim], dim=-1)
        qk = apply_rope(qk.view(B, T, n_qk_heads, self.head_dim), cos, sin)  # q and k rotated in one go
        q, k = qk.split([self.n_heads, self.n_kv_heads], dim=2)  # (B, T, H, D), (B, T, Hkv, D)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if cache_k is not None:
            # The cache may be wider than the body (Transformer.widen_): attention then runs in
            # the cache's dtype. The CPU kernel's blocking over keys depends on T and S, so a
            # position's output differs between a one-token step and a (K+1)-token verify: in
            # bf16 by an ulp (~4e-3), often enough to flip a near-tie of the logits; in float32
            # by ~1e-6, which changes the bf16 rounding that follows far more rarely.
            q, k, v = q.to(cache_k.dtype), k.to(cache_k.dtype), v.to(cache_k.dtype)
            rows = torch.arange(B, device=x.device)[:, None]
            cache_k[rows, input_pos] = k  # each row writes at its own positions
            cache_v[rows, input_pos] = v
            k, v = cache_k[:B], cache_v[:B]  # (B, S, Hkv, D): the mask hides what is not yet valid
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T or S, D)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=self.n_kv_heads != self.n_heads
        ).to(x.dtype)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``, with w1 and w3 fused into one matmul."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w13 = nn.Linear(config.dim, 2 * config.hidden_dim, bias=False)
        self.w2 = nn.Linear(config.hidden_dim, config.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, mask, input_pos, cache_k, cache_v):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, input_pos, cache_k, cache_v)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Decoder-only transformer. ``forward`` returns logits for every input position."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._kv_dtype: torch.dtype | None = None  # see widen_
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the body (embeddings, blocks); ``widen_`` may make the rest wider."""
        return self.tok_embeddings.weight.dtype

    @property
    def kv_dtype(self) -> torch.dtype:
        """The KV cache's dtype, in which cached attention runs: the body's unless widened."""
        return self._kv_dtype or self.dtype

    def widen_(self, dtype: torch.dtype = torch.float32) -> Transformer:
        """Under a narrower body (bf16 weights and matmuls), run the numerically sensitive parts
        in ``dtype``: cached attention and its KV cache, the final norm and the output head.
        Why: logits rounded to bf16 tie often (8-bit mantissa), and bf16 attention differs by
        an ulp between a one-token step and a (K+1)-token verify, so greedy tokens differed
        between plain and speculative decoding for reasons that have nothing to do with the
        sampler. This makes such flips rare, not impossible: no kernel here is bit-for-bit
        invariant to the batch shape. Costs little: the matmuls that stream the weights stay
        in the body's dtype."""
        self._kv_dtype = dtype
        self.norm.to(dtype)
        self.output.to(dtype)
        return self

    def new_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        """A zeroed cache for up to ``batch_size`` rows of ``max_seq_len`` positions, in the
        model's ``kv_dtype`` and device."""
        c, w = self.config, self.tok_embeddings.weight
        max_seq_len = c.max_seq_len if max_seq_len is None else max_seq_len
        if max_seq_len > c.max_seq_len:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the model's RoPE range {c.max_seq_len}")
        return KVCache(c.n_layers, batch_size, max_seq_len, c.n_kv_heads, c.head_dim, self.kv_dtype, w.device)

    def forward(
        self,
        tokens: Tensor,
        input_pos: Tensor | None = None,
        cache: KVCache | None = None,
        tree: TreeAttention | None = None,
    ) -> Tensor:
        """Logits ``[B, T, vocab]`` for every position of ``tokens [B, T]`` (int64).

        ``input_pos``: ``[B, T]`` int64 positions of each token, or ``[B]`` start positions
        (row ``b`` then sits at ``start[b] .. start[b]+T-1``); default ``cache.lengths`` with a
        cache and ``0..T-1`` without. With a cache, each row's K/V is written at its positions
        and every token attends to cached positions ``<=`` its own: prefill, 1-token decode and
        (K+1)-token verify are all this one call. Positions must be ``< cache.max_seq_len``
        (not checked: it would need a device sync).

        ``tree``: the tokens are nodes of a token tree (``TreeAttention``: where each is written,
        its RoPE position, what it attends to); needs a cache, and ``input_pos`` must be ``None``.
        """
        if tree is not None:
            return self._tree_forward(tokens, input_pos, cache, tree)
        B, T = tokens.shape
        steps = torch.arange(T, device=tokens.device)
        plain_causal = cache is None and input_pos is None  # training and scoring: SDPA's fast path
        if input_pos is None:
            input_pos = (cache.lengths[:B, None] + steps) if cache is not None else steps.expand(B, T)
        elif input_pos.dim() == 1:
            input_pos = input_pos[:, None] + steps
        if plain_causal:
            mask = None
        else:
            key_pos = torch.arange(cache.max_seq_len, device=tokens.device) if cache is not None else input_pos
            mask = key_pos.expand(B, -1)[:, None, None, :] <= input_pos[:, None, :, None]  # (B, 1, T, S)
        return self._run(tokens, input_pos, input_pos, mask, cache)

    def _tree_forward(self, tokens: Tensor, input_pos: Tensor | None, cache: KVCache | None, tree) -> Tensor:
        if cache is None:
            raise ValueError("tree: tree attention needs a cache (the tree's nodes are written into it)")
        if input_pos is not None:
            raise ValueError("input_pos: with tree=..., positions come from the tree; pass input_pos=None")
        return self._run(tokens, tree.slots(), tree.positions(), tree.mask(cache.max_seq_len), cache)

    def _embeddable(self, tokens: Tensor) -> Tensor:
        """The decoder feeds PAD_ID where a ragged prompt is padded or a finished row is frozen; no
        later query attends to those positions (their K/V is overwritten first), so any id serves.
        A model whose vocabulary has no PAD entry (vocab_size <= PAD_ID, e.g. a tiny test model)
        embeds token 0 there instead of failing; with the shipped vocabulary nothing changes."""
        if self.config.vocab_size > PAD_ID:
            return tokens
        return torch.where(tokens == PAD_ID, 0, tokens)

    def _run(self, tokens: Tensor, slots: Tensor, positions: Tensor, mask: Tensor | None, cache) -> Tensor:
        """The layers: K/V written at ``slots [B, T]``, RoPE at ``positions [B, T]``, ``mask`` as SDPA's."""
        cos = self.rope_cos[positions][:, :, None, :].to(self.dtype)  # (B, T, 1, D/2)
        sin = self.rope_sin[positions][:, :, None, :].to(self.dtype)

        x = self.tok_embeddings(self._embeddable(tokens))  # (B, T, C)
        for i, layer in enumerate(self.layers):
            cache_k = cache.k[i] if cache is not None else None
            cache_v = cache.v[i] if cache is not None else None
            x = layer(x, cos, sin, mask, slots, cache_k, cache_v)
        return self.output(self.norm(x.to(self.output.weight.dtype)))  # (B, T, vocab)
