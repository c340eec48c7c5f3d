// Sampling primitives the CPU verifiers share: blockwise inverse-CDF sampling from any weight
// function, and the NaN-safe first argmax. They state in C++ the rules of specdecode/core.py
// (inverse_cdf_sample, nan_safe_argmax). Moved here from csrc/rejection_sample.cpp so that the
// tree verifier (csrc/tree_rejection_sample.cpp) uses them too; the chain verifier can switch
// to this header and drop its copies (same code, namespace specdecode::sampling).
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace specdecode {
namespace sampling {

// The inverse-CDF scan works on blocks: one streaming pass stores block sums, then the search
// walks block sums and re-reads a single block, so a row is read about once, not twice.
constexpr int64_t kScanBlock = 128;

inline float positive_part(float value) { return value > 0.0f ? value : 0.0f; }  // NaN -> 0

template <typename Weights>
int64_t last_positive_in(const Weights& weight, int64_t begin, int64_t end) {
  for (int64_t v = end - 1; v >= begin; --v) {
    if (weight(v) > 0.0f) return v;
  }
  return -1;
}

// The smallest v with w(v) > 0 and cumsum(w)(v) > u * sum(w); -1 if sum(w) is not positive.
// `Weights` provides `float operator()(int64_t v)` (w(v) >= 0, NaN-free) and
// `double block_sum(int64_t begin, int64_t end)` (the sum of w over [begin, end)).
template <typename Weights>
int64_t sample_inverse_cdf(const Weights& weight, int64_t vocab_size, float u, std::vector<double>& block_sums) {
  const int64_t num_blocks = (vocab_size + kScanBlock - 1) / kScanBlock;
  block_sums.resize(num_blocks);
  double total = 0.0;
  for (int64_t block = 0; block < num_blocks; ++block) {
    block_sums[block] = weight.block_sum(block * kScanBlock, std::min(vocab_size, (block + 1) * kScanBlock));
    total += block_sums[block];
  }
  if (!(total > 0.0)) return -1;  // zero or NaN mass
  const double threshold = static_cast<double>(u) * total;
  double running = 0.0;
  for (int64_t block = 0; block < num_blocks; ++block) {
    const int64_t begin = block * kScanBlock, end = std::min(vocab_size, begin + kScanBlock);
    if (running + block_sums[block] > threshold) {
      for (int64_t v = begin; v < end; ++v) {
        const float w = weight(v);
        running += w;
        if (w > 0.0f && running > threshold) return v;
      }
      // The in-block sum rounded below the block sum: the block still holds the sample.
      return last_positive_in(weight, begin, end);
    }
    running += block_sums[block];
  }
  // Rounding put the threshold past the last block: take the last positive weight.
  for (int64_t block = num_blocks - 1; block >= 0; --block) {
    if (block_sums[block] > 0.0) {
      return last_positive_in(weight, block * kScanBlock, std::min(vocab_size, (block + 1) * kScanBlock));
    }
  }
  return -1;
}

inline float nan_to_neg_inf(float value) { return value == value ? value : -std::numeric_limits<float>::infinity(); }

// First index of the maximum, NaN counted as -inf (so 0 when there is no number). One pass of
// vectorised block maxima; a block is rescanned for its first maximum only when it beats the
// best so far (strict '>': on ties the earlier block wins).
template <typename scalar_t>
int64_t nan_safe_argmax(const scalar_t* row, int64_t vocab_size) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t best_id = 0;
  for (int64_t begin = 0; begin < vocab_size; begin += kScanBlock) {
    const int64_t end = std::min(vocab_size, begin + kScanBlock);
    float block_max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : block_max)
    for (int64_t v = begin; v < end; ++v) {
      const float value = nan_to_neg_inf(static_cast<float>(row[v]));
      block_max = value > block_max ? value : block_max;
    }
    if (block_max > best) {
      best = block_max;
      best_id = begin;
      while (nan_to_neg_inf(static_cast<float>(row[best_id])) != block_max) ++best_id;
    }
  }
  return best_id;
}

}  // namespace sampling
}  // namespace specdecode
