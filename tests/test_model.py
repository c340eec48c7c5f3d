"""The reference decoder: cached forward passes equal a full no-cache forward.

Random tiny models in float64, so "equal" can be a tight tolerance: any wrong position, mask,
RoPE angle or cache row shows up as an O(1e-2) difference, rounding as O(1e-15).
"""

import pytest
import torch

import specdecode as sd
from specdecode.decoder.model import ModelConfig, Transformer, TreeAttention
from specdecode.decoder.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, tokenizer

ATOL = 1e-10


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(n_kv_heads: int = 2, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB_SIZE, n_layers=2, dim=32, n_heads=4, n_kv_heads=n_kv_heads, max_seq_len=64)
    model = Transformer(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # larger weights than the training init: peaky, position-sensitive logits
            p.add_(torch.randn_like(p) * 0.2)
    return model


def full_logits(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_prefill_decode_verify_match_no_cache(n_kv_heads):
    model = tiny_model(n_kv_heads)
    tokens = torch.randint(0, 256, (3, 14))
    expected = full_logits(model, tokens)
    cache = model.new_cache(3, 32)
    got = []
    with torch.no_grad():
        for start, end in [(0, 5), (5, 6), (6, 10), (10, 11), (11, 14)]:  # prefill, decode, verify at offsets
            got.append(model(tokens[:, start:end], torch.full((3,), start), cache))
    assert torch.allclose(torch.cat(got, 1), expected, atol=ATOL, rtol=0)


def test_default_positions_come_from_cache_lengths():
    model = tiny_model()
    tokens = torch.randint(0, 256, (2, 9))
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        model(tokens[:, :6], cache=cache)
        cache.lengths += 6
        got = model(tokens[:, 6:], cache=cache)
    assert torch.allclose(got, full_logits(model, tokens)[:, 6:], atol=ATOL, rtol=0)


def test_ragged_rows_at_different_positions():
    """One multi-token step where every row sits at its own offset (ragged acceptance)."""
    model = tiny_model()
    lengths = [2, 7, 4]
    seqs = [torch.randint(0, 256, (n + 3,)) for n in lengths]
    cache = model.new_cache(3, 16)
    with torch.no_grad():
        for b, seq in enumerate(seqs):  # prefill each row alone into its own cache row
            row_cache = model.new_cache(1, 16)
            model(seq[None, : lengths[b]], cache=row_cache)
            for dst, src in zip(cache.tensors(), row_cache.tensors()):
                dst[b] = src[0]
        step = torch.stack([seq[n : n + 3] for seq, n in zip(seqs, lengths)])
        got = model(step, torch.tensor(lengths), cache)
        positions = torch.tensor(lengths)[:, None] + torch.arange(3)
        again = model(step, positions, cache)  # the [B, T] position form, same answer
    for b, (seq, n) in enumerate(zip(seqs, lengths)):
        assert torch.allclose(got[b], full_logits(model, seq[None])[0, n:], atol=ATOL, rtol=0)
    assert torch.allclose(again, got, atol=ATOL, rtol=0)


def test_rollback_is_moving_the_length_back():
    """Verify 4 tokens, keep 1, then write different tokens: stale entries must not leak."""
    model = tiny_model()
    prefix, rejected, replacement = (torch.randint(0, 256, (2, n)) for n in (6, 4, 5))
    cache = model.new_cache(2, 32)
    with torch.no_grad():
        model(prefix, cache=cache)
        model(rejected, torch.full((2,), 6), cache)  # positions 6..9
        got = model(replacement, torch.full((2,), 7), cache)  # keep position 6, overwrite from 7
    sequence = torch.cat([prefix, rejected[:, :1], replacement], 1)
    assert torch.allclose(got, full_logits(model, sequence)[:, 7:], atol=ATOL, rtol=0)


def test_copy_rows_shares_one_prefill_with_many_rows():
    model = tiny_model()
    prompt = torch.randint(0, 256, (1, 7))
    continuations = torch.randint(0, 256, (4, 3))
    cache = model.new_cache(4, 16)
    with torch.no_grad():
        model(prompt, cache=cache)  # a batch of 1 fills row 0 only
        cache.lengths[0] = 7
        cache.copy_rows_(torch.zeros(3, dtype=torch.long), torch.arange(1, 4), length=7)
        got = model(continuations, cache=cache)
    assert cache.lengths.tolist() == [7] * 4
    expected = full_logits(model, torch.cat([prompt.expand(4, -1), continuations], 1))[:, 7:]
    assert torch.allclose(got, expected, atol=ATOL, rtol=0)


def test_compacted_cache_serves_a_smaller_batch():
    """Survivors compacted into the first rows by ``sd.compact_kv_cache_`` (the cache tensors and
    the per-row lengths together) keep decoding exactly as if recomputed from scratch."""
    model = tiny_model()
    tokens = torch.randint(0, 256, (5, 9))
    cache = model.new_cache(5, 16)
    kept = torch.tensor([1, 3, 4])
    with torch.no_grad():
        model(tokens[:, :6], cache=cache)
        cache.lengths += torch.tensor([6, 6, 6, 6, 6])
        views = sd.compact_kv_cache_(cache.tensors() + [cache.lengths], kept, batch_dim=0)
        got = model(tokens[kept, 6:], cache=cache)  # a batch of 3 uses rows 0..2
    assert [v.shape[0] for v in views] == [3] * len(views)
    assert torch.allclose(got, full_logits(model, tokens[kept])[:, 6:], atol=ATOL, rtol=0)


def test_tree_attention_verifies_two_branches_and_the_kept_path_moves_into_place():
    """A root with two branches (nodes 1-2 and 3-4, written at positions 6..10) in one forward: each
    node's logits are its path's; after moving branch 2's K/V to positions 7, 8 (``move_positions_``)
    the cache continues as if that path had been decoded plainly."""
    model = tiny_model()
    prefix = torch.randint(0, 256, (2, 7))  # positions 0..6; position 6 is the root
    branch_a, branch_b, after = (torch.randint(0, 256, (2, 2)) for _ in range(3))
    depths = torch.tensor([[0, 1, 2, 1, 2]]).expand(2, -1)
    parents = [None, 0, 1, 0, 3]
    ancestors = torch.zeros(5, 5, dtype=torch.bool)
    for node in range(5):
        walk = node
        while walk is not None:
            ancestors[node, walk] = True
            walk = parents[walk]
    tree = TreeAttention(torch.full((2,), 6), depths, ancestors.expand(2, -1, -1), torch.arange(5).expand(2, -1))
    cache = model.new_cache(2, 24)
    with torch.no_grad():
        model(prefix[:, :6], cache=cache)
        got = model(torch.cat([prefix[:, 6:], branch_a, branch_b], 1), cache=cache, tree=tree)
        cache.move_positions_(torch.tensor([[9, 10]] * 2), torch.tensor([[7, 8]] * 2))
        continued = model(after, torch.full((2,), 9), cache)
    path_a, path_b = (full_logits(model, torch.cat([prefix, branch], 1))[:, 6:] for branch in (branch_a, branch_b))
    assert torch.allclose(got[:, :3], path_a, atol=ATOL, rtol=0)
    assert torch.allclose(got[:, [0, 3, 4]], path_b, atol=ATOL, rtol=0)
    expected = full_logits(model, torch.cat([prefix, branch_b, after], 1))[:, 9:]
    assert torch.allclose(continued, expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="input_pos"):
        model(branch_a, torch.zeros(2, dtype=torch.int64), cache, tree=tree)
    with pytest.raises(ValueError, match="tree"):
        model(branch_a, tree=tree)


def test_cache_layout_and_bytes_per_token():
    model = tiny_model(n_kv_heads=2)
    cache = model.new_cache(3, 10)
    assert len(cache.tensors()) == 2 * model.config.n_layers
    assert all(t.shape == (3, 10, 2, 8) and t.dtype == torch.float64 for t in cache.tensors())
    assert cache.bytes_per_token() == 2 * 2 * 2 * 8 * 8  # layers x (K, V) x heads x head_dim x 8 bytes
    assert cache.lengths.tolist() == [0, 0, 0]


def test_bf16_body_widened_to_float32():
    """``widen_``: a bf16 body (weights, matmuls) with cached attention, KV cache, final norm and
    output head in float32. Logits come out float32 and agree with the all-float32 model to bf16
    rounding; cached decode steps of 1 and of 3 tokens give a position the same logits here (to
    float32 rounding, not bf16's: kernels are not batch-shape invariant, so a bf16 rounding can
    still flip in general, rarely)."""
    reference = tiny_model().float()
    model = tiny_model().to(torch.bfloat16).widen_(torch.float32)
    assert model.dtype == torch.bfloat16 and model.kv_dtype == torch.float32
    assert model.output.weight.dtype == model.norm.weight.dtype == torch.float32
    assert model.new_cache(1, 8).k[0].dtype == torch.float32
    assert sd.kv_bytes_per_token(model) == 2 * 2 * 2 * 8 * 4
    tokens = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        logits, want = model(tokens), reference(tokens)
        caches = [model.new_cache(2, 16), model.new_cache(2, 16)]
        for cache in caches:
            model(tokens[:, :9], cache=cache)
        three = model(tokens[:, 9:], torch.full((2,), 9), caches[0])
        one = torch.cat([model(tokens[:, i : i + 1], torch.full((2,), i), caches[1]) for i in range(9, 12)], 1)
    assert logits.dtype == three.dtype == torch.float32
    scale = want.abs().max().item()
    assert 0 < (logits - want).abs().max().item() < 0.05 * scale  # the bf16 body ran: ~3 digits
    torch.testing.assert_close(three, one, atol=1e-5 * scale, rtol=0)


def test_config_and_cache_errors():
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(dim=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny_model().new_cache(1, 65)
    assert ModelConfig(dim=256).hidden_dim == 704  # 2/3 * 4 * 256 = 682.7, rounded up to 32


def test_tokenizer_round_trip():
    text = "def f(x):\n    return 'é∑🙂'\n"
    ids = tokenizer.encode(text, eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and all(0 <= i < 256 for i in ids[1:-1])
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids + [-1, -1]) == text  # output padding is dropped
    assert tokenizer.decode(list("é".encode())[:1]) == "\ufffd"  # half a character does not raise
