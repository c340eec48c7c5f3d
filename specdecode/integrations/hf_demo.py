"""specdecode with Hugging Face models, end to end, on tiny random-config Llamas (no download).

    python -m specdecode.integrations.hf_demo [--quick]   # also section 5 of `python -m specdecode demo`

1. batched lossless speculative decoding (greedy equals ``target.generate``; sampling);
2. Best-of-N and Speculative Rejection with an HF sequence classifier as the reward;
3. HF's own ``generate(assistant_model=...)`` verified by ``sd.rejection_sample``.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

from specdecode.integrations import transformers as sdhf

VOCAB = 512


def tiny_llama(**overrides) -> LlamaConfig:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        initializer_range=0.2,  # peaked distributions, so a close draft is accepted often
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaConfig(**{**settings, **overrides})


def close_draft(target: LlamaForCausalLM, noise: float = 0.02) -> LlamaForCausalLM:
    """A stand-in for a distilled draft: the target's weights plus a little noise."""
    draft = LlamaForCausalLM(tiny_llama()).eval()
    with torch.no_grad():
        for mine, theirs in zip(draft.parameters(), target.parameters()):
            mine.copy_(theirs.float() + noise * theirs.float().std() * torch.randn_like(mine))
    return draft


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over w0..w511, built locally."""
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="w0")


def main(quick: bool = False) -> bool:
    """Run the three examples, printing what each showed; returns whether greedy speculative
    decoding reproduced ``target.generate`` exactly (the one claim here that is exact)."""
    max_new_tokens = 24 if quick else 48
    torch.manual_seed(0)
    target = LlamaForCausalLM(tiny_llama()).eval()
    draft = close_draft(target)
    tokenizer = word_tokenizer()
    prompts = ["w5 w17 w300 w42 w7 w9 w11", "w1 w2 w3", "w400 w401", "w8 w8 w8 w8"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = batch["input_ids"], batch["attention_mask"]

    # 1. Speculative decoding, batched, left-padded: greedy equals the target's own generate().
    out = sdhf.speculative_generate(target, draft, ids, mask, num_draft_tokens=4, max_new_tokens=max_new_tokens)
    plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0)
    stats = out.stats
    identical = torch.equal(out.sequences, plain)
    print(f"greedy speculative == generate: {identical}")
    print(
        f"  target forwards {stats['target_forwards']} (generate: {max_new_tokens}), mean accepted length "
        f"{stats['mean_accepted_length']:.2f}, accepted histogram {stats['accepted_hist'].tolist()}, "
        f"cache {stats['cache_length']} columns, max dead columns {stats['max_dead_columns']}"
    )
    sampled = sdhf.speculative_generate(
        target.to(torch.bfloat16),  # a bf16 target with an fp32 draft works: logits are widened exactly
        draft,
        ids,
        mask,
        num_draft_tokens=4,
        max_new_tokens=16,
        do_sample=True,
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        seed=0,
    )
    target.float()
    print("sampled:", tokenizer.batch_decode(sampled.sequences[:, ids.shape[1] :])[0])

    # 2. Best-of-N vs Speculative Rejection, rewarded by an HF classifier with its own tokenizer.
    torch.manual_seed(1)
    reward_model = LlamaForSequenceClassification(tiny_llama(num_labels=1, pad_token_id=0)).eval()
    common = dict(n=16, max_new_tokens=24, seed=0, tokenizer=tokenizer, reward_tokenizer=tokenizer)
    best = sdhf.best_of_n(target, reward_model, ids, mask, **common)
    fast = sdhf.speculative_rejection(target, reward_model, ids, mask, alpha=0.75, decision_tokens=(6,), **common)
    print(f"Best-of-N: rewards {[round(r, 3) for r in best.rewards.tolist()]}, tokens {best.stats['tokens_generated']}")
    print(
        f"Speculative Rejection (alpha 0.75): rewards {[round(r, 3) for r in fast.rewards.tolist()]}, "
        f"tokens {fast.stats['tokens_generated']}, pruned {fast.stats['pruned']}"
    )
    if fast.rewards.mean() < best.rewards.mean():
        print(
            "  Speculative Rejection reaches a lower reward here: the reward model is randomly initialised, so a "
            "partial response's score does not predict the final one (this shows the API and the token savings, "
            "not the quality trade-off)"
        )

    # 3. HF's own assisted generation (batch 1), verified by this package's op.
    with sdhf.assisted_generation_verifier():
        assisted = target.generate(
            ids[:1], attention_mask=mask[:1], assistant_model=draft, do_sample=True, max_new_tokens=16, pad_token_id=0
        )
    print("assisted:", tokenizer.decode(assisted[0, ids.shape[1] :]))
    return identical


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m specdecode.integrations.hf_demo")
    parser.add_argument("--quick", action="store_true", help="fewer new tokens")
    main(quick=parser.parse_args().quick)
