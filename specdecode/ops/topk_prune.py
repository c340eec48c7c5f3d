"""Per-prompt top-k pruning by reward: ``torch.ops.specdecode.topk_prune`` and its public wrapper.

One op, one schema (declared in ``csrc/topk_prune.cpp``), a kernel per device -- C++ on CPU
tensors, Triton (``specdecode.kernels.topk_prune``) on CUDA tensors -- and a fake kernel for
``torch.compile``:

``torch.ops.specdecode.topk_prune(Tensor rewards, Tensor group_sizes, Tensor num_keep) -> Tensor
keep_mask``: fixed shape (``[N]`` bool), no host sync; the op CUDA-graph users call.

``topk_prune`` adds the argument checks and the data-dependent ``kept_indices``. The rules
(ranking, ties, NaN, rounding of alpha) are in ``docs/ops.md``; the reference is
``specdecode.reference.topk_prune``.

A round of Speculative Rejection::

    res = sd.topk_prune(rewards, group_sizes, alpha=0.5)
    cache = sd.compact_kv_cache_(cache, res.kept_indices, batch_dim=2)
    group_sizes = res.kept_group_sizes
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import torch

from specdecode.core import PruneResult, check_int, check_same_device, is_int, num_keep_from_alpha

__all__ = ["topk_prune", "kept_indices_from_mask", "num_keep_from_alpha", "PruneResult", "RewardPruner"]

_REWARD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)

_lib = torch.library.Library("specdecode", "IMPL")


def _topk_prune_cuda(rewards, group_sizes, num_keep):
    from specdecode.kernels.topk_prune import topk_prune as launch

    check_same_device("topk_prune", rewards=rewards, group_sizes=group_sizes, num_keep=num_keep)
    with torch.cuda.device(rewards.device):
        return launch(rewards, group_sizes, num_keep)


_lib.impl("topk_prune", _topk_prune_cuda, "CUDA")


@torch.library.register_fake("specdecode::topk_prune")
def _topk_prune_fake(rewards, group_sizes, num_keep):
    check_same_device("topk_prune", rewards=rewards, group_sizes=group_sizes, num_keep=num_keep)
    return torch.empty_like(rewards, dtype=torch.bool)


def topk_prune(
    rewards: torch.Tensor,
    group_sizes: torch.Tensor | Sequence[int],
    alpha: Real | None = None,
    *,
    num_keep: torch.Tensor | Sequence[int] | None = None,
) -> PruneResult:
    """Keep the best candidates of every prompt by (partial) reward, for many prompts at once.

    Args:
        rewards: ``[N]`` float32/float16/bfloat16 rewards. Candidates of prompt ``g`` are the
            contiguous slice given by ``group_sizes``. NaN ranks below every number; equal
            rewards go to the lower index; ``-0.0`` equals ``+0.0``.
        group_sizes: ``[P]`` ints (tensor or sequence), non-negative, summing to ``N``. Empty
            groups are fine.
        alpha: rejection rate in ``[0, 1]``: group ``g`` keeps ``max(1, ⌈(1−α)·n_g⌉)`` (0 if
            empty). Rounding is exact: α is read as the decimal that prints for it, so
            ``α = 0.7, n = 10`` keeps 3 (float arithmetic would give ``ceil(3.0000000000000004)``
            = 4). ``α = 0`` keeps all, ``α = 1`` keeps one per non-empty group.
        num_keep: instead of ``alpha``, ``[P]`` ints in ``[0, n_g]``.

    Returns:
        ``PruneResult(kept_indices [N'] int64 ascending, kept_group_sizes [P] int64,
        keep_mask [N] bool)`` on the device of ``rewards``. Inputs are not modified.

    Host sync: ``group_sizes`` and ``num_keep`` are read on the host (to check them and to size
    ``kept_indices``) -- one transfer if they are device tensors, none if they are host values.
    The rest runs on the device without a sync. For CUDA graphs call the fixed-shape op
    ``torch.ops.specdecode.topk_prune`` and ``kept_indices_from_mask`` directly.

    Raises:
        TypeError / ValueError naming the argument: wrong dtype or rank, both or neither of
        ``alpha``/``num_keep``, ``alpha`` outside ``[0, 1]``, group sizes negative or not
        summing to ``N``, ``num_keep[g]`` negative or larger than group ``g``.
    """
    _check_rewards(rewards)
    sizes, keeps = _host_sizes_and_keeps(group_sizes, alpha, num_keep)
    _check_groups(sizes, keeps, rewards.numel())
    device = rewards.device
    sizes_t, keeps_t = torch.tensor([sizes, keeps], dtype=torch.int64).to(device, non_blocking=True)
    keep_mask = torch.ops.specdecode.topk_prune(rewards, sizes_t, keeps_t)
    return PruneResult(kept_indices_from_mask(keep_mask, sum(keeps)), keeps_t, keep_mask)


def kept_indices_from_mask(keep_mask: torch.Tensor, num_kept: int) -> torch.Tensor:
    """``[num_kept]`` int64 ascending indices of the True entries of a ``[N]`` bool mask, with
    the count given by the caller (``sum(num_keep)``), so no host sync and a static shape on a
    device (entries past the real count would be -1). On the host the count is checked."""
    if not isinstance(keep_mask, torch.Tensor):
        raise TypeError(f"keep_mask must be a torch.Tensor, got {type(keep_mask).__name__}")
    if keep_mask.dtype != torch.bool or keep_mask.dim() != 1:
        raise ValueError(f"keep_mask must be a 1-D bool tensor; got {keep_mask.dtype} of shape {list(keep_mask.shape)}")
    if not isinstance(num_kept, torch.SymInt):  # a traced count is an int once the graph runs
        check_int("num_kept", num_kept)
    if not 0 <= num_kept <= keep_mask.numel():
        raise ValueError(f"num_kept = {num_kept} is outside [0, N = {keep_mask.numel()}]")
    if keep_mask.device.type == "cpu":  # no sync to avoid on the host, and nonzero is faster there
        indices = keep_mask.nonzero().flatten()
        if indices.numel() != num_kept:
            raise ValueError(f"keep_mask has {indices.numel()} True entries, not num_kept = {num_kept}")
        return indices
    return torch.nonzero_static(keep_mask, size=num_kept, fill_value=-1).flatten()


def _check_rewards(rewards) -> None:
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N]; got shape {list(rewards.shape)}")
    if rewards.dtype not in _REWARD_DTYPES:
        raise TypeError(
            f"rewards must be float32, float16 or bfloat16; got {str(rewards.dtype).removeprefix('torch.')}"
        )


def _host_sizes_and_keeps(group_sizes, alpha, num_keep) -> tuple[list[int], list[int]]:
    if (alpha is None) == (num_keep is None):
        raise ValueError("give exactly one of alpha (a rejection rate) and num_keep (counts per group)")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, Real):
            raise TypeError(f"alpha must be a real number in [0, 1], got {type(alpha).__name__}")
        if not 0 <= alpha <= 1:  # NaN fails too
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        sizes = _host_ints("group_sizes", group_sizes)
        return sizes, num_keep_from_alpha(sizes, alpha)
    if (
        isinstance(group_sizes, torch.Tensor)
        and isinstance(num_keep, torch.Tensor)
        and group_sizes.device.type != "cpu"
        and group_sizes.shape == num_keep.shape
        and group_sizes.device == num_keep.device
        and group_sizes.dim() == 1
    ):
        _check_int_tensor("group_sizes", group_sizes)
        _check_int_tensor("num_keep", num_keep)
        both = torch.stack([group_sizes.to(torch.int64), num_keep.to(torch.int64)]).tolist()  # the one sync
        return both[0], both[1]
    return _host_ints("group_sizes", group_sizes), _host_ints("num_keep", num_keep)


def _check_int_tensor(name: str, value: torch.Tensor) -> None:
    if value.dim() != 1 or value.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name} must be a 1-D int32/int64 tensor; got {value.dtype} of shape {list(value.shape)}")


def _host_ints(name: str, value) -> list[int]:
    if isinstance(value, torch.Tensor):
        _check_int_tensor(name, value)
        if value.device.type == "meta":
            raise ValueError(f"{name} is on meta: its values are needed (on the host) to size kept_indices")
        return value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a 1-D int tensor or a sequence of ints, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not is_int(item):
            raise TypeError(f"{name}[{i}] must be an int, got {type(item).__name__}")
    return list(value)


def _check_groups(sizes: list[int], keeps: list[int], num_rewards: int) -> None:
    if len(sizes) != len(keeps):
        raise ValueError(f"num_keep has {len(keeps)} entries but group_sizes has {len(sizes)} groups")
    for g, (size, keep) in enumerate(zip(sizes, keeps)):
        if size < 0:
            raise ValueError(f"group_sizes[{g}] = {size} is negative")
        if not 0 <= keep <= size:
            raise ValueError(f"num_keep[{g}] = {keep} is outside [0, {size}] (group {g} has {size} candidates)")
    if sum(sizes) != num_rewards:
        raise ValueError(f"group_sizes sum to {sum(sizes)} but rewards has N = {num_rewards} entries")


class RewardPruner(torch.nn.Module):
    """``topk_prune`` as a module: ``forward(rewards, group_sizes, num_keep=None) -> PruneResult``,
    with the rejection rate ``alpha`` fixed at construction (``num_keep`` overrides it)."""

    def __init__(self, alpha: Real) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a real number in [0, 1], got {alpha!r}")
        self.alpha = alpha

    def forward(
        self,
        rewards: torch.Tensor,
        group_sizes: torch.Tensor | Sequence[int],
        num_keep: torch.Tensor | Sequence[int] | None = None,
    ) -> PruneResult:
        if num_keep is not None:
            return topk_prune(rewards, group_sizes, num_keep=num_keep)
        return topk_prune(rewards, group_sizes, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
