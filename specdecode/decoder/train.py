"""Train the shipped target/draft pair on the Python standard library's own source files.

    python -m specdecode.decoder.train            # ~37 min on one CPU core with AMX, writes specdecode/decoder/weights/

Every machine with Python has this corpus offline: the top-level ``Lib/*.py`` files of the
running interpreter (``sysconfig.get_paths()["stdlib"]``), byte-tokenized, each file wrapped in
BOS ... EOS. Every 20th file (sorted by name) is held out for validation.

Two phases, both deterministic (seeded; fixed step counts, not a time budget):

1. **Joint**: the target learns the corpus (cross-entropy); on the same batch the draft learns
   half from the data and half from the target's (detached) next-byte distribution. The
   target's logits are computed anyway, so this distillation costs only the draft's own pass.
2. **Distil**: the draft alone is distilled from the finished target (forward KL), which is
   what raises the acceptance rate of speculative sampling: ``E[accept] = sum_x min(p, q)``.

Forward passes run under bf16 autocast (``--precision``; AMX makes it 2-4x faster than float32
here), weights and optimiser state stay float32. At the end both models are rounded to bf16
(what ships), evaluated in float32 on the held-out files (loss, and the draft's acceptance rate
against the target, teacher-forced), and saved with their config and these numbers to
``specdecode/decoder/weights/{target,draft}.pt``.

The shipped pair = ``python -m specdecode.decoder.train`` (log in ``specdecode/decoder/weights/train_log.txt``;
bit-for-bit reproducibility of this recipe was not re-checked):

- corpus: 168 files of CPython 3.11's ``Lib/*.py``, 4,479,365 training bytes, 219,359 held out;
  600 joint steps x 8 x 512 bytes = 2.46M bytes seen (about half an epoch), then 1,000
  distillation steps for the draft;
- target: 8 layers, dim 512, 8 heads / 2 KV heads, SwiGLU 1376: 22,425,088 parameters, 45 MB bf16;
- draft: 1 layer, dim 128, 4 heads / 1 KV head, SwiGLU 352: 242,816 parameters, 0.5 MB bf16;
- held-out loss (nats/byte): target 1.353 (1.95 bits/byte; final training loss 1.441), draft 1.512;
- draft vs target on held-out text, teacher-forced: expected acceptance at T=1
  ``E[sum_x min(p, q)]`` 0.826, greedy argmax agreement 0.806;
- wall time 2,245 s (37 min) with one thread, the other core mostly busy with other work.

Forward cost at batch 1, one thread (``python -m bench.bench_e2e``, the README's run): the target
in bf16 11.6 ms for 1 token, 12.8 ms for 6, 13.2 ms for 9 (bound by streaming 45 MB of weights);
the draft in float32 0.30 ms: about 39x apart.

(An earlier shipped pair had a 4.4M-parameter float32 target, 6 layers of dim 256: its forward
was dominated by per-operation overhead, only 9x the draft's and 1.3x dearer for 6 tokens than
for 1, which capped speculative decoding at 1.9x on this CPU.)

Training calls no ``specdecode`` op, but importing this module, like any part of the package,
loads the compiled extension (``specdecode/__init__.py`` imports it for the op schemas).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sysconfig
import time

import torch
import torch.nn.functional as F

from specdecode.decoder.generate import WEIGHTS_DIR, load_pretrained
from specdecode.decoder.model import ModelConfig, Transformer
from specdecode.decoder.tokenizer import BOS_ID, EOS_ID

# Sizes chosen so that the pair sits in the regime speculative decoding is for: the target's
# forward (22M params, run in bf16) is bound by streaming its 45 MB of weights, so a (K+1)-token
# verify costs about what one token does; the draft's is a few small launches, ~39x cheaper.
TARGET_CONFIG = ModelConfig(n_layers=8, dim=512, n_heads=8, n_kv_heads=2, max_seq_len=512)
DRAFT_CONFIG = ModelConfig(n_layers=1, dim=128, n_heads=4, n_kv_heads=1, max_seq_len=512)


def load_corpus(holdout_every: int = 20) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train tokens, val tokens, info): the stdlib's top-level ``*.py`` files as one int16
    stream each, files wrapped in BOS/EOS, every ``holdout_every``-th file for validation."""
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    train, val = [], []
    for i, path in enumerate(files):
        with open(path, "rb") as f:
            ids = [BOS_ID, *f.read(), EOS_ID]
        (val if i % holdout_every == holdout_every - 1 else train).extend(ids)
    info = {"stdlib": stdlib, "files": len(files), "train_bytes": len(train), "val_bytes": len(val)}
    return torch.tensor(train, dtype=torch.int16), torch.tensor(val, dtype=torch.int16), info


def random_windows(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch_size, seq_len + 1]`` int64 windows at random offsets (inputs and shifted targets)."""
    starts = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=generator)
    return torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).long()


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: Transformer, lr: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )


def logits_of(model: Transformer, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """float32 logits of ``model`` on ``x``; with ``bf16`` the matmuls run under bf16 autocast
    (the weights and optimiser state stay float32), which AMX makes 2-4x faster on this CPU."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(x).float()


def distill_loss(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Forward KL(target || draft) per token, averaged."""
    return F.kl_div(
        draft_logits.flatten(0, 1).log_softmax(-1),
        target_logits.flatten(0, 1).log_softmax(-1),
        log_target=True,
        reduction="batchmean",
    )


def train_step(optimizer, loss: torch.Tensor, model: Transformer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(target: Transformer, draft: Transformer, val: torch.Tensor, seq_len: int, num_windows: int = 32) -> dict:
    """Held-out loss of both models, and the draft's acceptance rate against the target on
    the same text (teacher-forced): sampling at temperature 1, ``E[sum_x min(p, q)]``;
    greedy, how often the two argmaxes agree."""
    stride = (len(val) - seq_len - 1) // num_windows
    windows = torch.stack([val[i * stride : i * stride + seq_len + 1] for i in range(num_windows)]).long()
    sums = {"target_val_loss": 0.0, "draft_val_loss": 0.0, "acceptance_sampled": 0.0, "acceptance_greedy": 0.0}
    for chunk in windows.split(8):
        x, y = chunk[:, :-1], chunk[:, 1:].flatten()
        q_logits, p_logits = target(x).float().flatten(0, 1), draft(x).float().flatten(0, 1)
        n = len(chunk) / num_windows
        sums["target_val_loss"] += F.cross_entropy(q_logits, y).item() * n
        sums["draft_val_loss"] += F.cross_entropy(p_logits, y).item() * n
        sums["acceptance_sampled"] += (
            torch.minimum(q_logits.softmax(-1), p_logits.softmax(-1)).sum(-1).mean().item() * n
        )
        sums["acceptance_greedy"] += (q_logits.argmax(-1) == p_logits.argmax(-1)).float().mean().item() * n
    return sums


def save(model: Transformer, path: str, meta: dict) -> None:
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": state, "meta": meta}, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joint-steps", type=int, default=600)
    parser.add_argument("--distill-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default="bf16",
        help="matmul precision of the training forward passes (bf16 autocast by default)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; part of the recipe (reduction order), and on a shared "
        "2-core machine one thread beats two that spin-wait for each other",
    )
    parser.add_argument(
        "--continue-from",
        default=None,
        metavar="DIR",
        help="load the pair saved in DIR, skip the joint phase and run one more "
        "distillation round (--distill-steps) on its draft; the target is unchanged",
    )
    parser.add_argument("--out", default=WEIGHTS_DIR)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bf16 = args.precision == "bf16"
    data_gen = torch.Generator().manual_seed(args.seed)
    train_data, val_data, info = load_corpus()
    if args.continue_from:
        target, draft = load_pretrained(weights_dir=args.continue_from)
        draft.train()
        info = dict(target.training_info)
        info["extra_distill_rounds"] = info.get("extra_distill_rounds", []) + [
            {
                "steps": args.distill_steps,
                "seed": args.seed,
                "lr": args.lr / 2,
                "threads": args.threads,
                "precision": args.precision,
            }
        ]
        args.joint_steps = 0
    else:
        target, draft = Transformer(TARGET_CONFIG), Transformer(DRAFT_CONFIG)
        info.update(
            target_params=target.num_parameters(),
            draft_params=draft.num_parameters(),
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            seed=args.seed,
            threads=args.threads,
            precision=args.precision,
            lr=args.lr,
            joint_steps=args.joint_steps,
            distill_steps=args.distill_steps,
        )
    print(json.dumps(info))
    target_opt, draft_opt = make_optimizer(target, args.lr), make_optimizer(draft, args.lr)
    start = time.perf_counter()

    for step in range(args.joint_steps):
        batch = random_windows(train_data, args.batch_size, args.seq_len, data_gen)
        x, y = batch[:, :-1], batch[:, 1:].flatten()
        target_logits = logits_of(target, x, bf16)
        target_loss = F.cross_entropy(target_logits.flatten(0, 1), y)
        train_step(target_opt, target_loss, target, cosine_lr(step, args.joint_steps, args.lr, 50))
        draft_logits = logits_of(draft, x, bf16)
        draft_ce = F.cross_entropy(draft_logits.flatten(0, 1), y)
        draft_loss = 0.5 * draft_ce + 0.5 * distill_loss(draft_logits, target_logits.detach())
        train_step(draft_opt, draft_loss, draft, cosine_lr(step, args.joint_steps, args.lr, 50))
        if step % 50 == 0 or step == args.joint_steps - 1:
            print(
                f"joint {step:4d}  target loss {target_loss.item():.3f}  draft ce {draft_ce.item():.3f}  "
                f"{time.perf_counter() - start:6.0f}s",
                flush=True,
            )
    if args.joint_steps:
        info["target_train_loss"] = target_loss.item()

    target.eval()
    draft_opt = make_optimizer(draft, args.lr / 2)
    for step in range(args.distill_steps):
        x = random_windows(train_data, args.batch_size, args.seq_len, data_gen)[:, :-1]
        with torch.no_grad():
            target_logits = logits_of(target, x, bf16)
        draft_logits = logits_of(draft, x, bf16)
        loss = distill_loss(draft_logits, target_logits)
        train_step(draft_opt, loss, draft, cosine_lr(step, args.distill_steps, args.lr / 2, 20))
        if step % 50 == 0 or step == args.distill_steps - 1:
            print(
                f"distill {step:4d}  KL(target||draft) {loss.item():.3f}  {time.perf_counter() - start:6.0f}s",
                flush=True,
            )
    seconds = round(time.perf_counter() - start, 1)
    if args.continue_from:
        info["extra_distill_rounds"][-1].update(draft_train_kl=loss.item(), seconds=seconds)
    else:
        info.update(draft_train_kl=loss.item(), train_seconds=seconds)

    # Evaluate what ships: bf16-rounded weights, run in float32.
    for model in (target, draft):
        model.load_state_dict({k: v.bfloat16().float() for k, v in model.state_dict().items()})
    draft.eval()
    info.update({k: round(v, 4) for k, v in evaluate(target, draft, val_data, args.seq_len).items()})
    os.makedirs(args.out, exist_ok=True)
    save(target, os.path.join(args.out, "target.pt"), info)
    save(draft, os.path.join(args.out, "draft.pt"), info)
    print(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    main()
