"""Train the shipped code reward model: does a response, once finished, come out well-formed?

    python -m specdecode.decoder.train_reward     # ~25 min on one shared CPU core; writes weights/reward.pt

**The property** (``specdecode.decoder.rewards.well_formed``): prompt + response, cut after its
last complete line, is read by Python's own ``tokenize`` with no error token (unterminated
one-line strings, stray characters, invalid UTF-8), no dedent to a column no enclosing block
used, and every closing bracket matching its opener -- a completion that closes what it opens
and stays indented consistently, what a user of a code model wants at the least. It is
prefix-closed: once broken, no continuation repairs it.

**The data**, made here from what every machine has offline:

1. prompts: 1-3 lines of the Python standard library's ``Lib/*.py`` (the split of
   ``specdecode.decoder.train``: every 20th file held out), each starting at a line that opens
   a statement (``def``, ``class``, ``for``, ``if``, ``return``, ...), well-formed themselves, half
   of them cut mid-line (as a user's cursor is);
2. responses: the shipped **draft** and **target** sampling at temperature 1 up to
   ``--max-new-tokens`` (256) bytes from those prompts (``best_of_n``'s engine, several per prompt);
3. labels: ``well_formed(prompt + response)`` of the finished response.

Train prompts come from training files, held-out prompts from held-out files.

**The model**: ``RewardModel(REWARD_MODEL_CONFIG)``, its own 2-layer byte-level Transformer
(dim 64, ~0.12M parameters) with a scalar head. It is trained at **every prefix** of each
response (every position from the prompt's last token on) to tell whether what it has read so
far is well-formed (``prefix_labels``: binary cross-entropy on the logit, one dense label per
position), so on a finished response it scores the property itself, and on a partial one it
scores the partial text the same way -- which, the property being prefix-closed, bounds the
finished response's: a prefix that is broken stays broken. (A first recipe trained every
prefix on the finished response's label alone; with ~3,000 responses and 150 steps of 24 it learned
nothing beyond the base rate, held-out AUC 0.55.)

Held-out numbers (``weights/reward_train_log.txt``): accuracy at threshold 0 and AUC on finished
responses, and at prefixes of 16, 64 and 128 response tokens against the finished label, next to
the accuracy of always answering the majority label. The shipped model: held-out AUC 0.615 on the
draft's completions (512; accuracy 82.6% vs 82.2% for the majority label) and 0.701 on the
target's (64 only; 65.6% vs 53.1%) -- weak, and still improving at its last step (loss 0.57 ->
0.45 over the last 100 steps): more steps or data would help, which the CPU budget here did not
allow. Making the data took 838 s and training 516 s on one core of a 2-core machine shared with
other jobs (load average ~10), a few times what they take alone.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from specdecode.decoder.best_of_n import best_of_n
from specdecode.decoder.generate import load_pretrained
from specdecode.decoder.rewards import REWARD_MODEL_CONFIG, REWARD_WEIGHTS, RewardModel, well_formed
from specdecode.decoder.tokenizer import BOS_ID, PAD_ID
from specdecode.decoder.train import load_corpus

# A prompt starts at a line opening one of these statements (any indentation).
STATEMENT_START = re.compile(rb"^ *(def|class|for|if|elif|else|while|with|try|except|return|import|from)\b")
PREFIX_TOKENS = (16, 64, 128)  # where held-out accuracy on partial responses is reported


@dataclass(frozen=True)
class DataRecipe:
    """How many completions of which model: ``prompts`` prompts x ``per_prompt`` samples each."""

    model: str  # "draft" or "target"
    split: str  # "train" or "val"
    prompts: int
    per_prompt: int


RECIPES = (
    DataRecipe("draft", "train", 160, 16),
    DataRecipe("target", "train", 24, 8),
    DataRecipe("draft", "val", 32, 16),
    DataRecipe("target", "val", 8, 8),
)


@dataclass
class Example:
    tokens: list[int]  # BOS, prompt bytes, response tokens (EOS included if emitted)
    prompt_length: int  # BOS + prompt
    label: bool  # well_formed(prompt + response)
    source: str  # "draft/train", ...


def prefix_labels(example: Example) -> list[bool]:
    """``well_formed`` of what each trained position has read: position ``t`` (from the prompt's
    last token to the row's end) has read the text's first ``t`` bytes; EOS adds nothing. As
    ``well_formed`` looks at complete lines only, the label changes after a newline at most, and
    once False it stays False; the last position's label is the finished response's."""
    data = bytes(t for t in example.tokens[1:] if t < 256)
    ok_through_line: dict[int, bool] = {}  # newline index -> well_formed(data[: index + 1])
    labels, last_newline = [], -1
    for t in range(example.prompt_length - 1, len(example.tokens)):
        seen = min(t, len(data))
        newline = data.rfind(b"\n", 0, seen)
        if newline > last_newline:
            ok_through_line[newline] = well_formed(data[: newline + 1].decode("utf-8", "replace"))[0]
            last_newline = newline
        labels.append(ok_through_line.get(newline, True))
    return labels


def source_files(split: str) -> list[bytes]:
    """The standard library's files of ``split`` as bytes (``specdecode.decoder.train``'s split)."""
    train, val, _ = load_corpus()
    stream = (train if split == "train" else val).long()
    bounds = (stream == BOS_ID).nonzero().flatten().tolist() + [len(stream)]
    files = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        body = stream[start + 1 : end]
        files.append(bytes(body[body < 256].to(torch.uint8).tolist()))
    return files


def sample_prompts(split: str, count: int, generator: torch.Generator) -> list[str]:
    """``count`` prompts of 1-3 lines from ``split``'s files (module docstring)."""
    starts = [
        (text, lines, i)
        for text in source_files(split)
        for lines in [text.split(b"\n")]
        for i, line in enumerate(lines[:-3])
        if STATEMENT_START.match(line)
    ]
    prompts: list[str] = []
    while len(prompts) < count:
        _, lines, i = starts[int(torch.randint(len(starts), (1,), generator=generator))]
        num_lines = 1 + int(torch.randint(3, (1,), generator=generator))
        text = b"\n".join(lines[i : i + num_lines]) + b"\n"
        if bool(torch.rand((), generator=generator) < 0.5):  # cut mid-line, as a cursor is
            last = lines[i + num_lines - 1]
            indent = len(last) - len(last.lstrip())  # keep at least the statement's first character
            keep = indent + 1 + int(torch.randint(max(1, len(last) - indent), (1,), generator=generator))
            text = text[: len(text) - 1 - len(last) + keep]
        prompt = text.decode("utf-8", "replace")
        if 0 < len(text) <= 160 and well_formed(prompt)[0]:
            prompts.append(prompt)
    return prompts


def _zero_reward(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.zeros(tokens.shape[0])


def complete(model, prompts: list[str], per_prompt: int, max_new_tokens: int, seed: int, chunk: int) -> list:
    """Every sampled completion: ``(prompt, response token list)``, ``per_prompt`` per prompt."""
    out = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        run = best_of_n(
            model, _zero_reward, part, per_prompt, max_new_tokens, generator=torch.Generator().manual_seed(seed + start)
        )
        for g, prompt in enumerate(part):
            for j in range(per_prompt):
                k = int(run.candidate_num_tokens[g, j])
                out.append((prompt, run.candidate_tokens[g, j, :k].tolist()))
    return out


def make_examples(models: dict, recipe: DataRecipe, max_new_tokens: int, seed: int) -> list[Example]:
    generator = torch.Generator().manual_seed(seed)
    prompts = sample_prompts(recipe.split, recipe.prompts, generator)
    chunk = max(1, 256 // recipe.per_prompt) if recipe.model == "draft" else max(1, 64 // recipe.per_prompt)
    examples = []
    for prompt, response in complete(models[recipe.model], prompts, recipe.per_prompt, max_new_tokens, seed, chunk):
        prompt_ids = [BOS_ID, *prompt.encode()]
        text = prompt + bytes(t for t in response if t < 256).decode("utf-8", "replace")
        examples.append(
            Example(prompt_ids + response, len(prompt_ids), well_formed(text)[0], f"{recipe.model}/{recipe.split}")
        )
    return examples


def batch_of(examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tokens [B, L]`` (PAD after each row), ``mask [B, L]`` of the positions trained on (the
    prompt's last token to the row's end: every prefix with 0.. response tokens), ``labels [B]``."""
    width = max(len(e.tokens) for e in examples)
    tokens = torch.full((len(examples), width), PAD_ID, dtype=torch.int64)
    mask = torch.zeros(len(examples), width, dtype=torch.bool)
    for b, e in enumerate(examples):
        tokens[b, : len(e.tokens)] = torch.tensor(e.tokens)
        mask[b, e.prompt_length - 1 : len(e.tokens)] = True
    return tokens, mask, torch.tensor([e.label for e in examples], dtype=torch.float32)


def position_targets(examples: list[Example], labels_of: dict[int, list[bool]], width: int) -> torch.Tensor:
    """``[B, width]`` float: each trained position's ``prefix_labels`` (0 elsewhere)."""
    targets = torch.zeros(len(examples), width)
    for b, e in enumerate(examples):
        targets[b, e.prompt_length - 1 : len(e.tokens)] = torch.tensor(labels_of[id(e)], dtype=torch.float32)
    return targets


def prefix_loss(model: RewardModel, examples: list[Example], labels_of: dict[int, list[bool]]) -> torch.Tensor:
    """Binary cross-entropy of every trained prefix's logit against ``prefix_labels`` (what that
    prefix is: one dense label per position, not only the row's last); each row weighs the same
    however long it is. ``labels_of``: ``id(example) -> prefix_labels(example)``."""
    tokens, mask, _ = batch_of(examples)
    scores = model.position_scores(tokens)
    targets = position_targets(examples, labels_of, tokens.shape[1])
    losses = F.binary_cross_entropy_with_logits(scores, targets, reduction="none")
    return ((losses * mask).sum(1) / mask.sum(1)).mean()


@torch.no_grad()
def accuracy(model: RewardModel, examples: list[Example]) -> dict:
    """Held-out accuracy (logit > 0 means well-formed) on finished responses and at prefixes of
    ``PREFIX_TOKENS`` response tokens (responses at least that long), with the majority baseline."""
    result = {}
    for at in (None, *PREFIX_TOKENS):
        rows = [e for e in examples if at is None or len(e.tokens) - e.prompt_length > at]
        cut = [e.tokens if at is None else e.tokens[: e.prompt_length + at] for e in rows]
        hits, positives, scores, labels_all = 0, 0, [], []
        for start in range(0, len(rows), 64):
            part = rows[start : start + 64]
            part_cut = cut[start : start + 64]
            tokens, _, labels = batch_of(
                [Example(t, e.prompt_length, e.label, e.source) for t, e in zip(part_cut, part)]
            )
            lengths = torch.tensor([len(t) for t in part_cut])
            values = model(tokens, lengths)
            hits += int(((values > 0).float() == labels).sum())
            positives += int(labels.sum())
            scores += values.tolist()
            labels_all += labels.tolist()
        name = "finished" if at is None else f"prefix_{at}"
        result[name] = {
            "rows": len(rows),
            "accuracy": hits / max(1, len(rows)),
            "majority_accuracy": max(positives, len(rows) - positives) / max(1, len(rows)),
            "well_formed_rate": positives / max(1, len(rows)),
            "auc": auc(scores, labels_all),
        }
    return result


def auc(scores: list[float], labels: list[float]) -> float:
    """Area under the ROC curve: the chance a well-formed row outscores a broken one (ties 1/2);
    NaN without both kinds. Ranking is what Best-of-N and pruning use, so this is the measure
    that matters more than accuracy at one threshold."""
    pos = sorted(s for s, y in zip(scores, labels) if y)
    neg = sorted(s for s, y in zip(scores, labels) if not y)
    if not pos or not neg:
        return math.nan
    wins = sum(
        bisect.bisect_left(neg, p) + 0.5 * (bisect.bisect_right(neg, p) - bisect.bisect_left(neg, p)) for p in pos
    )
    return wins / (len(pos) * len(neg))


def train(
    examples: list[Example], steps: int, batch_size: int, lr: float, seed: int, log, config=REWARD_MODEL_CONFIG
) -> RewardModel:
    """A ``RewardModel(config)`` trained by AdamW on ``prefix_loss`` over random batches of ``examples``."""
    torch.manual_seed(seed)
    model = RewardModel(config, seed=seed).train()
    labels_of = {id(e): prefix_labels(e) for e in examples}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:  # linear warm-up, then linear decay to 10%
            group["lr"] = lr * min(1.0, (step + 1) / 30) * (1 - 0.9 * step / steps)
        picks = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        loss = prefix_loss(model, [examples[i] for i in picks], labels_of)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.0f}s")
    return model.eval()


def save(model: RewardModel, path: str, meta: dict) -> None:
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict(), "meta": meta}, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--data", default=None, help="cache the generated examples in this file (reused if present)")
    parser.add_argument("--out", default=REWARD_WEIGHTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log_path = os.path.splitext(args.out)[0] + "_train_log.txt"
    log_file = open(log_path, "w")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")

    start = time.perf_counter()
    if args.data and os.path.exists(args.data):
        examples = [Example(**e) for e in torch.load(args.data, weights_only=False)]
        log(f"data: {len(examples)} responses read from {args.data}")
    else:
        target, draft = load_pretrained(dtype=(torch.float32, torch.float32))
        models = {"target": target, "draft": draft}
        examples = []
        for i, recipe in enumerate(RECIPES):
            made = make_examples(models, recipe, args.max_new_tokens, args.seed + 1000 * i)
            rate = sum(e.label for e in made) / len(made)
            log(f"data {recipe}: {len(made)} responses, {rate:.1%} well-formed, {time.perf_counter() - start:.0f}s")
            examples += made
        if args.data:
            torch.save([asdict(e) for e in examples], args.data)
    data_seconds = time.perf_counter() - start
    for source in sorted({e.source for e in examples}):
        made = [e for e in examples if e.source == source]
        log(f"{source}: {len(made)} responses, {sum(e.label for e in made) / len(made):.1%} well-formed")
    train_set = [e for e in examples if e.source.endswith("/train")]
    held_out = [e for e in examples if e.source.endswith("/val")]
    model = train(train_set, args.steps, args.batch_size, args.lr, args.seed, log)
    save(model, args.out, {})  # the weights first: the evaluation below only adds to the metadata
    held_out_accuracy = {
        source: accuracy(model, [e for e in held_out if e.source == source]) for source in ("draft/val", "target/val")
    }
    meta = {
        "recipe": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
        "data": [asdict(r) for r in RECIPES],
        "train_responses": len(train_set),
        "held_out_responses": len(held_out),
        "train_well_formed_rate": sum(e.label for e in train_set) / len(train_set),
        "held_out_accuracy": held_out_accuracy,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_seconds": data_seconds,
        "seconds": time.perf_counter() - start,
    }
    log(json.dumps(meta, indent=1))
    save(model, args.out, meta)
    log_file.close()
    return meta


if __name__ == "__main__":
    main()
