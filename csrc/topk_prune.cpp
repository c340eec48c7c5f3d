// CPU kernel of torch.ops.specdecode.topk_prune: batched per-prompt top-k reward pruning.
// The ranking is specdecode/reference/topk_prune.py (read its docstring): per group, the num_keep
// best rewards, NaN below every number, ties to the lower index. Groups run in parallel
// (OpenMP); inside a group one nth_element over packed 64-bit keys selects the survivors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "checks.h"

namespace specdecode {
namespace {

constexpr int64_t kMinCandidatesPerThread = 16384;

// An unsigned key whose integer order is the reward order: NaN -> 0 (below -inf, whose key is
// 0x007FFFFF), -0.0 folded into +0.0 (they tie), negatives bit-inverted, positives offset by
// 2^31. kernels/topk_prune.py computes the same key.
inline uint32_t reward_key(float reward) {
  if (std::isnan(reward)) return 0u;
  if (reward == 0.0f) reward = 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &reward, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Key in the high word, inverted local index in the low word: a larger packed value is a better
// candidate, and equal rewards prefer the lower index -- one strict total order, so "the top k"
// is a single well-defined set and nth_element cannot pick a different one than the reference.
inline uint64_t packed_rank(float reward, int64_t local_index) {
  return (static_cast<uint64_t>(reward_key(reward)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(local_index));
}

template <typename scalar_t>
void prune_group(const scalar_t* rewards, int64_t size, int64_t keep, bool* keep_mask,
                 std::vector<uint64_t>& scratch) {
  std::fill(keep_mask, keep_mask + size, keep >= size);
  if (keep <= 0 || keep >= size) return;
  scratch.resize(size);
  for (int64_t i = 0; i < size; ++i) scratch[i] = packed_rank(static_cast<float>(rewards[i]), i);
  std::nth_element(scratch.begin(), scratch.begin() + (keep - 1), scratch.end(), std::greater<uint64_t>());
  for (int64_t r = 0; r < keep; ++r) keep_mask[0xFFFFFFFFu - static_cast<uint32_t>(scratch[r])] = true;
}

void check_inputs(const at::Tensor& rewards, const at::Tensor& group_sizes, const at::Tensor& num_keep) {
  check_same_device("topk_prune", {{"rewards", &rewards}, {"group_sizes", &group_sizes}, {"num_keep", &num_keep}});
  TORCH_CHECK(rewards.dim() == 1, "topk_prune: rewards must be 1-D [N], got ", rewards.sizes());
  const auto dtype = rewards.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "topk_prune: rewards must be float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(group_sizes.dim() == 1 && group_sizes.scalar_type() == at::kLong,
              "topk_prune: group_sizes must be a 1-D int64 tensor, got ", group_sizes.scalar_type(), " of shape ",
              group_sizes.sizes());
  TORCH_CHECK(num_keep.dim() == 1 && num_keep.scalar_type() == at::kLong,
              "topk_prune: num_keep must be a 1-D int64 tensor, got ", num_keep.scalar_type(), " of shape ",
              num_keep.sizes());
  TORCH_CHECK(group_sizes.size(0) == num_keep.size(0), "topk_prune: group_sizes has ", group_sizes.size(0),
              " groups but num_keep has ", num_keep.size(0));
  TORCH_CHECK(rewards.size(0) < (int64_t{1} << 32), "topk_prune: rewards has ", rewards.size(0),
              " entries; at most 2^32 - 1 candidates");
}

// Group starts from sizes checked one by one: each size in [0, N] and each partial sum <= N, so
// the running sum never overflows (a sum that wraps could otherwise pass "sums to N").
std::vector<int64_t> group_starts(const int64_t* sizes, const int64_t* keeps, int64_t num_groups, int64_t N) {
  std::vector<int64_t> starts(num_groups + 1, 0);
  for (int64_t g = 0; g < num_groups; ++g) {
    TORCH_CHECK(sizes[g] >= 0 && sizes[g] <= N, "topk_prune: group_sizes[", g, "] = ", sizes[g],
                " is outside [0, N = ", N, "]");
    TORCH_CHECK(keeps[g] >= 0 && keeps[g] <= sizes[g], "topk_prune: num_keep[", g, "] = ", keeps[g],
                " is outside [0, group size ", sizes[g], "]");
    TORCH_CHECK(sizes[g] <= N - starts[g], "topk_prune: group_sizes[0..", g, "] sum to more than the N = ", N,
                " rewards");
    starts[g + 1] = starts[g] + sizes[g];
  }
  TORCH_CHECK(starts[num_groups] == N, "topk_prune: group_sizes sum to ", starts[num_groups], " but there are ", N,
              " rewards");
  return starts;
}

at::Tensor topk_prune_cpu(const at::Tensor& rewards_in, const at::Tensor& group_sizes_in,
                          const at::Tensor& num_keep_in) {
  check_inputs(rewards_in, group_sizes_in, num_keep_in);
  const auto rewards = rewards_in.contiguous();
  const auto group_sizes = group_sizes_in.contiguous();
  const auto num_keep = num_keep_in.contiguous();
  const int64_t N = rewards.size(0), P = group_sizes.size(0);
  const int64_t* sizes = group_sizes.data_ptr<int64_t>();
  const int64_t* keeps = num_keep.data_ptr<int64_t>();
  // Values are on the host here, so the checks the CUDA path leaves to validate=True are free.
  const std::vector<int64_t> starts = group_starts(sizes, keeps, P, N);

  // Threads only pay off for enough candidates per thread: below that, waking a second thread
  // costs more than the selection (and a busy core turns the wait into a scheduler slice).
  const int64_t grain = std::max<int64_t>(1, kMinCandidatesPerThread * P / std::max<int64_t>(N, 1));
  auto keep_mask = at::empty({N}, rewards.options().dtype(at::kBool));
  bool* mask = keep_mask.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rewards.scalar_type(), "topk_prune_cpu", [&] {
    const scalar_t* values = rewards.data_ptr<scalar_t>();
    at::parallel_for(0, P, grain, [&](int64_t begin, int64_t end) {
      // Packed keys of one group. Kept per thread across calls (it only grows, to the largest
      // group seen): a fresh buffer each call costs page faults that dwarf the selection itself.
      thread_local std::vector<uint64_t> scratch;
      for (int64_t g = begin; g < end; ++g) {
        prune_group(values + starts[g], sizes[g], keeps[g], mask + starts[g], scratch);
      }
    });
  });
  return keep_mask;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specdecode, m) {
  m.def("topk_prune(Tensor rewards, Tensor group_sizes, Tensor num_keep) -> Tensor keep_mask");
}

TORCH_LIBRARY_IMPL(specdecode, CPU, m) { m.impl("topk_prune", &topk_prune_cpu); }

}  // namespace specdecode
