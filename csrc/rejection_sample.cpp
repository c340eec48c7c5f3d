// CPU kernel of torch.ops.specdecode.rejection_sample: lossless speculative sampling.
// The algorithm is specdecode/reference/rejection_sample.py (read its docstring first); this file
// follows it row by row, with OpenMP across rows. Per row it reads the K gathered
// probabilities, then only the one target row (and draft row) it samples the emitted token from.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "checks.h"
#include "philox.h"
#include "rejection_core.h"
#include "sampling.h"

namespace specdecode {
namespace {

// The blockwise inverse-CDF sampler and the NaN-safe argmax are shared with the tree verifier.
using sampling::nan_safe_argmax;
using sampling::sample_inverse_cdf;

// w(v) = max(0, q(v) - p(v) - [v == one_hot_id]), NaN -> 0: the dense draft row p only when
// kDense (a compile-time switch, so the streaming loop has no branch on it); one_hot_id >= 0 for
// draft-probability-free proposers, -1 otherwise. Same float ops as the Triton kernel.
template <typename scalar_t, bool kDense>
struct ResidualWeights {
  const scalar_t* q;
  const scalar_t* p;
  int64_t one_hot_id;

  float operator()(int64_t v) const {
    return positive_part(difference(v) - (v == one_hot_id ? 1.0f : 0.0f));
  }

  // Sum of w over [begin, end). Only the block holding the one-hot id needs the id compare; the
  // others stream without it (an index compare in the loop made it 6x slower).
  double block_sum(int64_t begin, int64_t end) const {
    if (one_hot_id >= begin && one_hot_id < end) return exact_sum(begin, end);
    // `omp simd reduction` allows the lane-wise (reassociated) float sum that plain -O3 will not
    // do; with at most sampling::kScanBlock / 4 terms per lane the block sum is within ~2e-6 relative.
    // The row pointers are copied to locals: read through `this` inside the loop, GCC keeps the
    // loop scalar in some inlining contexts (seen when this moved behind chain::verify_chain: 6x).
    const scalar_t* const q_row = q;
    const scalar_t* const p_row = p;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = begin; v < end; ++v) {
      float diff = static_cast<float>(q_row[v]);
      if constexpr (kDense) diff -= static_cast<float>(p_row[v]);
      sum += positive_part(diff);
    }
    // Finite weights near float32's maximum (unnormalised rows) can overflow a float sum to inf;
    // then sum this block again in double, which cannot overflow (the reference sums in float64).
    if (std::isinf(sum)) return exact_sum(begin, end);
    return sum;
  }

 private:
  double exact_sum(int64_t begin, int64_t end) const {
    double sum = 0.0;
    for (int64_t v = begin; v < end; ++v) sum += (*this)(v);
    return sum;
  }
  float difference(int64_t v) const {
    float diff = static_cast<float>(q[v]);
    if constexpr (kDense) diff -= static_cast<float>(p[v]);
    return diff;
  }
  static float positive_part(float diff) { return diff > 0.0f ? diff : 0.0f; }  // NaN -> 0
};

template <typename scalar_t>
struct VerifyArgs {
  const int64_t* draft_ids;  // [B, K] contiguous
  const scalar_t* draft_probs;  // [B, K, V] or nullptr
  const scalar_t* target_probs;  // [B, K+1, V]
  const bool* greedy;  // [B]
  const int64_t* seeds;  // [1] or [B]
  const int64_t* offsets;  // [1] or [B]
  int64_t num_seeds, num_offsets, num_drafts, vocab_size;
  int64_t draft_stride_b, draft_stride_k, target_stride_b, target_stride_k;
  int64_t* token_ids;  // [B, K+1]
  int64_t* num_accepted;  // [B]
};

// One row of the padded batch as chain::verify_chain's Request (csrc/rejection_core.h holds the
// chain itself, shared with the ragged op).
template <typename scalar_t>
class PaddedRow {
 public:
  PaddedRow(const VerifyArgs<scalar_t>& a, int64_t b, std::vector<double>& scratch)
      : a_(a), b_(b), drafts_(a.draft_ids + b * a.num_drafts), scratch_(scratch) {}

  int64_t draft(int64_t i) const { return drafts_[i]; }
  bool has_bonus_id() const { return false; }
  int64_t bonus_id() const { return 0; }
  int64_t target_argmax(int64_t i) const { return nan_safe_argmax(target_row(i), a_.vocab_size); }

  bool accepts(int64_t i, int64_t x, float u) const {
    const float p_x = a_.draft_probs ? static_cast<float>(draft_row(i)[x]) : 1.0f;
    return u * p_x < static_cast<float>(target_row(i)[x]);  // strict: q(x) = 0 never passes
  }

  int64_t sample(int64_t j, bool residual, float u) const {
    const scalar_t* q_j = target_row(j);
    if (residual && a_.draft_probs) {
      return sample_inverse_cdf(ResidualWeights<scalar_t, true>{q_j, draft_row(j), -1}, a_.vocab_size, u, scratch_);
    }
    return sample_inverse_cdf(ResidualWeights<scalar_t, false>{q_j, nullptr, residual ? drafts_[j] : -1},
                              a_.vocab_size, u, scratch_);
  }

 private:
  const scalar_t* target_row(int64_t i) const { return a_.target_probs + b_ * a_.target_stride_b + i * a_.target_stride_k; }
  const scalar_t* draft_row(int64_t i) const { return a_.draft_probs + b_ * a_.draft_stride_b + i * a_.draft_stride_k; }

  const VerifyArgs<scalar_t>& a_;
  int64_t b_;
  const int64_t* drafts_;
  std::vector<double>& scratch_;
};

template <typename scalar_t>
void verify_row(const VerifyArgs<scalar_t>& a, int64_t b, std::vector<double>& scratch) {
  const chain::Stream stream{static_cast<uint64_t>(a.seeds[a.num_seeds == 1 ? 0 : b]),
                             static_cast<uint64_t>(a.offsets[a.num_offsets == 1 ? 0 : b]),
                             a.num_seeds == 1 ? static_cast<uint32_t>(b) : 0u};
  PaddedRow<scalar_t> row(a, b, scratch);
  const chain::Outcome outcome = chain::verify_chain(row, stream, a.num_drafts, a.vocab_size, a.greedy[b]);
  chain::write_tokens(a.token_ids + b * (a.num_drafts + 1), row, outcome, a.num_drafts + 1);
  a.num_accepted[b] = outcome.num_accepted;
}

bool is_probability_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
}

// Unit stride along V, or V == 1 (a size-1 dim's stride is never used to address anything).
bool streams_vocab(const at::Tensor& probs) { return probs.size(2) == 1 || probs.stride(2) == 1; }

void check_inputs(const at::Tensor& draft_ids, const std::optional<at::Tensor>& draft_probs,
                  const at::Tensor& target_probs, const at::Tensor& greedy, const at::Tensor& seeds,
                  const at::Tensor& offsets) {
  check_same_device("rejection_sample", {{"draft_token_ids", &draft_ids},
                                         {"draft_probs", optional_ptr(draft_probs)},
                                         {"target_probs", &target_probs},
                                         {"greedy", &greedy},
                                         {"seeds", &seeds},
                                         {"offsets", &offsets}});
  TORCH_CHECK(draft_ids.dim() == 2 && draft_ids.scalar_type() == at::kLong && draft_ids.is_contiguous(),
              "rejection_sample: draft_token_ids must be a contiguous [B, K] int64 tensor, got ",
              draft_ids.scalar_type(), " of shape ", draft_ids.sizes());
  const int64_t B = draft_ids.size(0), K = draft_ids.size(1);
  TORCH_CHECK(target_probs.dim() == 3 && target_probs.size(0) == B && target_probs.size(1) == K + 1,
              "rejection_sample: target_probs must be [B, K+1, V] = [", B, ", ", K + 1, ", V], got ",
              target_probs.sizes());
  TORCH_CHECK(is_probability_dtype(target_probs.scalar_type()),
              "rejection_sample: target_probs must be floating point, got ", target_probs.scalar_type());
  TORCH_CHECK(target_probs.size(2) > 0 && target_probs.size(2) < (int64_t{1} << 31),
              "rejection_sample: target_probs must have 0 < V < 2^31, got V = ", target_probs.size(2));
  TORCH_CHECK(streams_vocab(target_probs), "rejection_sample: target_probs must have unit stride in V, got strides ",
              target_probs.strides());
  if (draft_probs) {
    TORCH_CHECK(draft_probs->dim() == 3 && draft_probs->size(0) == B && draft_probs->size(1) == K &&
                    draft_probs->size(2) == target_probs.size(2),
                "rejection_sample: draft_probs must be [B, K, V] = [", B, ", ", K, ", ", target_probs.size(2),
                "], got ", draft_probs->sizes());
    TORCH_CHECK(streams_vocab(*draft_probs), "rejection_sample: draft_probs must have unit stride in V, got strides ",
                draft_probs->strides());
    TORCH_CHECK(draft_probs->scalar_type() == target_probs.scalar_type(), "rejection_sample: draft_probs (",
                draft_probs->scalar_type(), ") and target_probs (", target_probs.scalar_type(), ") dtypes differ");
  }
  TORCH_CHECK(greedy.dim() == 1 && greedy.size(0) == B && greedy.scalar_type() == at::kBool && greedy.is_contiguous(),
              "rejection_sample: greedy must be a contiguous [B] = [", B, "] bool tensor, got ", greedy.scalar_type(),
              " of shape ", greedy.sizes());
  for (const NamedTensor& named : {NamedTensor{"seeds", &seeds}, NamedTensor{"offsets", &offsets}}) {
    const at::Tensor& t = *named.second;
    TORCH_CHECK(t.dim() == 1 && (t.size(0) == 1 || t.size(0) == B) && t.scalar_type() == at::kLong &&
                    t.is_contiguous(),
                "rejection_sample: ", named.first, " must be a contiguous int64 tensor of shape [1] or [B] = [", B,
                "], got ", t.scalar_type(), " of shape ", t.sizes());
  }
}

std::tuple<at::Tensor, at::Tensor> rejection_sample_cpu(const at::Tensor& draft_token_ids,
                                                        const std::optional<at::Tensor>& draft_probs,
                                                        const at::Tensor& target_probs, const at::Tensor& greedy,
                                                        const at::Tensor& seeds, const at::Tensor& offsets) {
  check_inputs(draft_token_ids, draft_probs, target_probs, greedy, seeds, offsets);
  const int64_t B = draft_token_ids.size(0), K = draft_token_ids.size(1), V = target_probs.size(2);
  auto token_ids = at::empty({B, K + 1}, draft_token_ids.options());
  auto num_accepted = at::empty({B}, draft_token_ids.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target_probs.scalar_type(), "rejection_sample_cpu", [&] {
    VerifyArgs<scalar_t> args{
        draft_token_ids.data_ptr<int64_t>(),
        draft_probs ? draft_probs->data_ptr<scalar_t>() : nullptr,
        target_probs.data_ptr<scalar_t>(),
        greedy.data_ptr<bool>(),
        seeds.data_ptr<int64_t>(),
        offsets.data_ptr<int64_t>(),
        seeds.size(0), offsets.size(0), K, V,
        draft_probs ? draft_probs->stride(0) : 0, draft_probs ? draft_probs->stride(1) : 0,
        target_probs.stride(0), target_probs.stride(1),
        token_ids.data_ptr<int64_t>(), num_accepted.data_ptr<int64_t>()};
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> scratch;  // block sums, reused across this thread's rows
      for (int64_t b = begin; b < end; ++b) verify_row(args, b, scratch);
    });
  });
  return {token_ids, num_accepted};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specdecode, m) {
  m.def(
      "rejection_sample(Tensor draft_token_ids, Tensor? draft_probs, Tensor target_probs, Tensor greedy, "
      "Tensor seeds, Tensor offsets) -> (Tensor token_ids, Tensor num_accepted)");
}

TORCH_LIBRARY_IMPL(specdecode, CPU, m) { m.impl("rejection_sample", &rejection_sample_cpu); }

}  // namespace specdecode
