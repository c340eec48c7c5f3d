"""A tiny target/draft Llama pair and a tokenizer, made locally (no download) and saved with
``save_pretrained`` into a directory vLLM loads like any Hugging Face checkpoint.

The draft is the target's first layer (its embedding, layer 0, final norm and head, plus a little
noise; the target's second layer is scaled down): a smaller model that agrees with the target
often but not always, so acceptance counts are neither 0 nor all. ``initializer_range=0.2`` (not
HF's 0.02) makes next-token distributions peaked, so greedy decisions are rarely near-ties between
a one-token and a multi-token forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB_SIZE = 512
HEAD_DIM = 64  # vLLM's CPU attention takes the usual head sizes (64 is one of them)
NUM_HEADS = 2  # divisible by 2: tensor_parallel_size=2 splits heads
TARGET_LAYERS = 2
DRAFT_LAYERS = 1
DRAFT_NOISE = 0.02  # relative Gaussian noise on the draft's copied weights
LAST_LAYER_SCALE = 0.05  # the target's second layer writes this much into the residual stream
MAX_POSITIONS = 512
CORPUS_LINES = 400


@dataclass(frozen=True)
class TinyModels:
    """Paths of the saved models; both directories hold the same tokenizer."""

    target_dir: Path
    draft_dir: Path


def _config(num_layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=NUM_HEADS * HEAD_DIM,
        num_hidden_layers=num_layers,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        intermediate_size=256,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )


def _tokenizer():
    """A word-level tokenizer trained on a synthetic corpus (ids 0-2 are pad, bos, eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    generator = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(VOCAB_SIZE)]
    corpus = [
        " ".join(words[int(i)] for i in torch.randint(0, VOCAB_SIZE, (16,), generator=generator))
        for _ in range(CORPUS_LINES)
    ]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _draft_from(target, seed: int):
    """The draft: a one-layer Llama holding the target's embedding, first layer, norm and head."""
    from transformers import LlamaForCausalLM

    draft = LlamaForCausalLM(_config(DRAFT_LAYERS)).eval()
    target_weights = target.state_dict()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in draft.state_dict().items():
            source = target_weights[name]
            noise = torch.randn(source.shape, generator=generator) * source.float().std() * DRAFT_NOISE
            weight.copy_(source + noise)
    return draft


def build_tiny_models(root: Path, seed: int = 0) -> TinyModels:
    """Create and save the pair under ``root`` (``target/`` and ``draft/``)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    target = LlamaForCausalLM(_config(TARGET_LAYERS)).eval()
    with torch.no_grad():  # the layer the draft lacks changes the target's choice only sometimes
        last = target.model.layers[-1]
        last.self_attn.o_proj.weight.mul_(LAST_LAYER_SCALE)
        last.mlp.down_proj.weight.mul_(LAST_LAYER_SCALE)
    draft = _draft_from(target, seed + 1)
    tokenizer = _tokenizer()
    models = TinyModels(target_dir=root / "target", draft_dir=root / "draft")
    for model, directory in ((target, models.target_dir), (draft, models.draft_dir)):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return models
