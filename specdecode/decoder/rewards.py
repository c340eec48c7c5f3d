"""Rewards for Best-of-N and Speculative Rejection: score partial or finished responses.

A reward is any callable ``reward(tokens, lengths) -> Tensor [B]`` (float, higher is better):

- ``tokens [B, L]`` int64: row ``b`` is the prompt followed by the response so far (a partial
  response at a decision point, or a finished one, EOS included if it was emitted); positions
  ``>= lengths[b]`` hold PAD and must be ignored;
- ``lengths [B]`` int64: the number of valid tokens of each row (prompt + response).

If the callable also takes a ``prompt_lengths`` argument (keyword, ``[B]`` int64), it receives
where each response starts -- the built-in rewards below do. ``score(reward, ...)`` is the one
place that calls a reward: it chunks large batches and checks what comes back.

Built in:

- ``LogLikelihoodReward(model)``: the mean log-likelihood of the response under ``model`` at
  temperature 1 -- the reward of the experiment that maximises the probability of the generated
  response in "Fast Best-of-N Decoding via Speculative Rejection" (arXiv 2410.20290, its Table 2:
  lower perplexity is better; ``exp(-reward)`` is the response's perplexity).
- ``RewardModel``: a small Transformer with a scalar head on the last token. Randomly initialised
  it is a **stand-in** for a real reward model (its scores mean nothing); it shows the shapes,
  the cost of a separate scoring network, and the plumbing. ``RewardModel.from_language_model``
  starts its trunk from a language model's weights, as real reward models are fine-tuned from one.
- ``load_reward_model()``: the **trained** code reward model that ships in
  ``specdecode/decoder/weights/reward.pt`` (a 2-layer ``RewardModel`` of ~0.12M parameters, its own
  byte-level network). Its score is the logit of "this response, once finished, will be
  well-formed" (``well_formed`` below: it closes what it opens and stays indented consistently),
  trained by ``python -m specdecode.decoder.train_reward`` on the shipped models' own completions,
  labelled by ``well_formed``. It is trained at every prefix of a response on whether that prefix
  is well-formed, so it scores a partial response the way it scores a finished one; the property
  being prefix-closed, a broken prefix means a broken finished response -- what Speculative
  Rejection needs of a partial reward. Training data, recipe and
  held-out accuracy: ``specdecode/decoder/train_reward.py`` and ``weights/reward_train_log.txt``.
"""

from __future__ import annotations

import inspect
import io
import os
import tokenize
from collections.abc import Callable

import torch
from torch import Tensor, nn

from specdecode.decoder.model import Block, ModelConfig, RMSNorm, Transformer, rope_tables

Reward = Callable[..., Tensor]

__all__ = [
    "Reward",
    "LogLikelihoodReward",
    "RewardModel",
    "score",
    "takes_prompt_lengths",
    "well_formed",
    "load_reward_model",
    "REWARD_MODEL_CONFIG",
    "REWARD_WEIGHTS",
]

REWARD_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "reward.pt")
# The shipped code reward model: 2 layers of dim 64 (~0.12M parameters, 0.5 MB in float32).
REWARD_MODEL_CONFIG = ModelConfig(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, max_seq_len=512)
_CLOSER_OF = {")": "(", "]": "[", "}": "{"}


def takes_prompt_lengths(reward: Reward) -> bool:
    """Whether ``reward`` accepts a ``prompt_lengths`` keyword (or ``**kwargs``)."""
    try:
        params = inspect.signature(reward).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: call with two arguments
        return False
    return any(p.name == "prompt_lengths" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@torch.no_grad()
def score(
    reward: Reward, tokens: Tensor, lengths: Tensor, prompt_lengths: Tensor, batch_size: int | None = None
) -> Tensor:
    """``reward`` on rows ``tokens [B, L]`` in chunks of ``batch_size`` rows (all at once if None),
    each chunk cut to its longest row. Returns ``[B]`` float32 on the device of ``tokens``.

    Raises ``ValueError``/``TypeError`` naming the reward if it returns something other than a
    ``[rows]`` float tensor."""
    num_rows = tokens.shape[0]
    if num_rows == 0:
        return torch.empty(0, dtype=torch.float32, device=tokens.device)
    pass_prompt = takes_prompt_lengths(reward)
    step = num_rows if batch_size is None else batch_size
    out = []
    for start in range(0, num_rows, step):
        rows = slice(start, start + step)
        width = int(lengths[rows].max())
        args = (tokens[rows, :width], lengths[rows])
        values = reward(*args, prompt_lengths=prompt_lengths[rows]) if pass_prompt else reward(*args)
        out.append(_checked(reward, values, args[0].shape[0]))
    return torch.cat(out).to(device=tokens.device, dtype=torch.float32)


def _checked(reward: Reward, values, num_rows: int) -> Tensor:
    name = getattr(reward, "__name__", type(reward).__name__)
    if not isinstance(values, Tensor):
        raise TypeError(f"reward {name} must return a torch.Tensor, got {type(values).__name__}")
    if values.shape != (num_rows,) or not values.is_floating_point():
        raise ValueError(
            f"reward {name} must return a [{num_rows}] float tensor (one score per row), "
            f"got {values.dtype} of shape {list(values.shape)}"
        )
    return values


def response_token_logprobs(
    model: Transformer, tokens: Tensor, lengths: Tensor, prompt_lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Log-probabilities ``[B, L-1]`` (float32, temperature 1) of each next token under ``model``,
    and the ``[B, L-1]`` mask of the ones that are response tokens (``prompt_len <= j+1 < length``)."""
    logits = model(tokens)  # plain causal: PAD after a row's end cannot change earlier positions
    logprobs = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tokens[:, 1:, None])[..., 0]
    next_pos = torch.arange(1, tokens.shape[1], device=tokens.device)[None, :]
    mask = (next_pos >= prompt_lengths[:, None]) & (next_pos < lengths[:, None])
    return logprobs, mask


def well_formed(text: str) -> tuple[bool, str]:
    """Whether Python source ``text`` (a prompt and its response) is well-formed **as far as it
    goes**, and why not: cut after its last complete line (a response stopped by
    ``max_new_tokens`` usually ends mid-line), Python's own ``tokenize`` reads it with

    - no error token (an unterminated one-line string, a stray character such as ``$`` or ``?``,
      an invalid UTF-8 byte decoded as U+FFFD),
    - no dedent to a column that no enclosing block used (``IndentationError``),
    - every closing bracket matching the last open one.

    Brackets, strings and blocks still open at the cut are fine (more would follow). A text whose
    first line is indented by ``w`` columns was cut from inside blocks it does not show: it is
    read as nested in blocks at columns 0, 4, ... below ``w`` (PEP 8's 4 spaces). Returns
    ``(ok, reason)``, reason one of ``"ok"``, ``"open at end"``, ``"error token"``, ``"indent"``,
    ``"bracket"``. Once a response is not well-formed, no continuation makes it so."""
    cut = text[: text.rfind("\n") + 1]
    first_indent = len(text) - len(text.lstrip(" "))
    cut = "".join(" " * column + "if 1:\n" for column in range(0, first_indent, 4)) + cut if cut else cut
    open_brackets: list[str] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(cut).readline):
            if token.type == tokenize.ERRORTOKEN and not token.string.isspace():
                return False, "error token"
            if token.type != tokenize.OP:
                continue
            if token.string in "([{":
                open_brackets.append(token.string)
            elif token.string in _CLOSER_OF and (not open_brackets or open_brackets.pop() != _CLOSER_OF[token.string]):
                return False, "bracket"
    except IndentationError:
        return False, "indent"
    except tokenize.TokenError:  # EOF inside a bracket or a triple-quoted string: open at the cut
        return True, "open at end"
    except SyntaxError:
        return False, "error token"
    return True, "ok"


class LogLikelihoodReward:
    """Mean log-likelihood of the response under ``model`` (temperature 1), the reward of the
    experiment that maximises the probability of the generated response in "Fast Best-of-N
    Decoding via Speculative Rejection" (arXiv 2410.20290, Table 2): ``mean_j log p(y_j | prompt,
    y_<j)`` over the response tokens so far (EOS included once emitted). A row with no response
    token scores 0.

    When ``best_of_n``/``speculative_rejection`` generate with this same ``model``, they read the
    reward from the log-probabilities already computed while decoding (``running_sums=True``,
    the default) instead of running a second forward over every scored row: the same numbers up
    to float rounding (cached vs full-sequence attention), checked by the tests."""

    def __init__(self, model: Transformer, running_sums: bool = True):
        if not isinstance(model, Transformer):
            raise TypeError(f"model must be a specdecode Transformer, got {type(model).__name__}")
        self.model = model
        self.running_sums = running_sums

    @torch.no_grad()
    def __call__(self, tokens: Tensor, lengths: Tensor, prompt_lengths: Tensor) -> Tensor:
        logprobs, mask = response_token_logprobs(self.model, tokens, lengths, prompt_lengths)
        count = mask.sum(1)
        total = torch.where(mask, logprobs, 0.0).sum(1)
        return torch.where(count > 0, total / count.clamp_min(1), 0.0)

    @staticmethod
    def from_running_sums(logprob_sum: Tensor, num_tokens: Tensor) -> Tensor:
        """The reward from per-row sums of response log-probabilities and response lengths."""
        return torch.where(num_tokens > 0, logprob_sum / num_tokens.clamp_min(1), 0.0).float()

    def __repr__(self) -> str:
        return f"LogLikelihoodReward(model={self.model.num_parameters():,} params)"


class RewardModel(nn.Module):
    """A small Llama-style Transformer trunk with a scalar head read at each row's last token.

    **A stand-in for a real reward model**: randomly initialised (or with a trunk copied from a
    language model and a random head), its scores rank responses arbitrarily. It is here so the
    Speculative Rejection loop can be run and timed with a separate scoring network, as in the
    paper (which uses e.g. an 7-8B RM); plug in a trained model with the same call signature.

    ``forward(tokens [B, L], lengths [B], prompt_lengths=None) -> [B] float32``. It scores the
    whole row (prompt and response, like a chat RM scores the conversation); causal attention
    means the PAD after a row's end does not change its score.
    """

    def __init__(self, config: ModelConfig | None = None, seed: int | None = 0):
        super().__init__()
        config = config or ModelConfig(n_layers=2, dim=128, n_heads=4, n_kv_heads=2, max_seq_len=1024)
        self.config = config
        generator_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)  # a reproducible stand-in; the caller's RNG is restored below
        try:
            self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
            self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
            self.norm = RMSNorm(config.dim, config.norm_eps)
            self.head = nn.Linear(config.dim, 1)
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
        finally:
            if seed is not None:
                torch.random.set_rng_state(generator_state)
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.eval()

    @classmethod
    def from_language_model(cls, model: Transformer, seed: int | None = 0) -> RewardModel:
        """A reward model whose trunk (embeddings, blocks, final norm) is a copy of ``model``'s and
        whose scalar head is random: how real reward models start before preference training."""
        rm = cls(ModelConfig(**model.config.to_dict()), seed=seed)
        trunk = {k: v for k, v in model.state_dict().items() if not k.startswith("output.")}
        missing = rm.load_state_dict(trunk, strict=False).missing_keys
        assert set(missing) <= {"head.weight", "head.bias"}, missing
        return rm.to(device=model.output.weight.device, dtype=model.dtype)

    def features(self, tokens: Tensor) -> Tensor:
        """``[B, T, dim]``: the normed trunk output at every position of ``tokens [B, T]`` (causal:
        position ``t`` sees tokens ``0..t``). Differentiable (training reads every position)."""
        B, T = tokens.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"rows of {T} tokens exceed the reward model's max_seq_len {self.config.max_seq_len}")
        pos = torch.arange(T, device=tokens.device).expand(B, T)
        dtype = self.head.weight.dtype
        cos = self.rope_cos[pos][:, :, None, :].to(dtype)
        sin = self.rope_sin[pos][:, :, None, :].to(dtype)
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, None, pos, None, None)  # mask None: causal, SDPA's fast path
        return self.norm(x)

    def position_scores(self, tokens: Tensor) -> Tensor:
        """``[B, T]`` float: the score of every prefix ``tokens[:, : t + 1]`` (one forward)."""
        return self.head(self.features(tokens))[..., 0].float()

    @torch.no_grad()
    def forward(self, tokens: Tensor, lengths: Tensor, prompt_lengths: Tensor | None = None) -> Tensor:
        features = self.features(tokens)
        last = features[torch.arange(tokens.shape[0], device=tokens.device), (lengths - 1).clamp_min(0)]
        return self.head(last)[:, 0].float()


def load_reward_model(path: str = REWARD_WEIGHTS, device: torch.device | str | None = None) -> RewardModel:
    """The trained code reward model (module docstring): ``forward(tokens, lengths) -> [B]`` logits
    of "the finished response is ``well_formed``". ``training_info`` holds its recipe and held-out
    accuracy. Raises ``FileNotFoundError`` (saying how to train it) if ``path`` does not exist."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no reward model at {path}: train it with python -m specdecode.decoder.train_reward")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = RewardModel(ModelConfig(**saved["config"]), seed=None)
    model.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
    model.training_info = saved.get("meta", {})
    return model.to(device).eval()
