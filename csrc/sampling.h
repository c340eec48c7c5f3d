// Sampling primitives the CPU verifiers share: blockwise inverse-CDF sampling from any weight
// function, and the NaN-safe first argmax (the rules of specdecode/core.py: inverse_cdf_sample,
// nan_safe_argmax), used by the chain, ragged and tree verifiers; and the vectorised softmax of a
// logits row (one-pass statistics, block probabilities, with AVX2 chosen at run time) that the
// ragged verifier computes from logits.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SPECDECODE_X86_SIMD 1
#else
#define SPECDECODE_X86_SIMD 0
#endif

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


// ------------------------------------------------------------------------------------------
// Softmax of a logits row, vectorised: the statistics (max, 1 / sum) in one pass over the row,
// and probabilities of a block. The build targets baseline x86-64 (SSE2); on a CPU with AVX2 the
// same kernels run 8 wide, chosen once at run time (`kernels()`). Every path computes the same
// bits: the same exp (no FMA: a fused multiply-add rounds once, which baseline x86-64 cannot do)
// and sums in 8 fixed lanes (lane j adds elements j, j + 8, ...) added up in a fixed order, so
// a seed gives the same tokens on any x86-64 machine. SPECDECODE_CPU_KERNELS=baseline forces
// the SSE2 path (to compare the two). Other architectures use the portable loops below, which
// define the arithmetic.
// ------------------------------------------------------------------------------------------

// exp(x) for x <= 0 (softmax arguments): 2^n * poly(r) with r = x - n ln 2, |r| <= ln 2 / 2, a
// degree-6 Taylor polynomial (relative error below 2.3e-7, measured on [-87, 0]). exp(-inf)
// (masked logits) is exactly 0; NaN stays NaN. The vector kernels perform the same operations.
inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding then subtracting it rounds to an integer
  const float clamped = x < -87.0f ? -87.0f : x;
  // Not std::floor / std::nearbyint: without SSE4.1 they are calls (the vector kernels use the same trick).
  const float n = (clamped * kLog2e + kRound) - kRound;
  const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;
  float poly = 1.0f / 720.0f;
  poly = poly * r + 1.0f / 120.0f;
  poly = poly * r + 1.0f / 24.0f;
  poly = poly * r + 1.0f / 6.0f;
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float value = poly * scale;
  return x < -87.0f ? 0.0f : (x == x ? value : x);
}

constexpr int kLanes = 8;
constexpr int64_t kSoftmaxChunk = 1024;  // floats per step of the one-pass statistics (4 KiB: stays in L1)

inline float lanes_total(const float* lanes) {
  return ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
}

// The kernels, on float32 arrays. `t` divides every element first (t == 1: not at all, the same
// bits); NaN is ignored by the max and counts 0 in sums.
struct RowKernels {
  float (*max_scaled)(const float* x, int64_t n, float t);  // max of x / t, -inf if no number
  void (*exp_sum)(const float* x, int64_t n, float t, float shift, float* lanes);  // lanes += exp(x / t - shift)
  void (*probs)(const float* x, int64_t n, float t, float shift, float norm, float* out);  // exp(x / t - shift) * norm
  float (*positive_diff_sum)(const float* q, const float* p, int64_t n);  // sum of max(0, q - p); p may be null
};

namespace portable {

inline float scaled(float x, float t) { return t == 1.0f ? x : x / t; }

inline float max_scaled(const float* x, int64_t n, float t) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    const float value = scaled(x[i], t);
    best = value > best ? value : best;  // NaN never compares greater
  }
  return best;
}

inline void exp_sum(const float* x, int64_t n, float t, float shift, float* lanes) {
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_nonpositive(scaled(x[i], t) - shift);
    lanes[i % kLanes] += e == e ? e : 0.0f;
  }
}

inline void probs(const float* x, int64_t n, float t, float shift, float norm, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = exp_nonpositive(scaled(x[i], t) - shift) * norm;
}

inline float positive_diff_sum(const float* q, const float* p, int64_t n) {
  float lanes[kLanes] = {};
  for (int64_t i = 0; i < n; ++i) {
    const float diff = p ? q[i] - p[i] : q[i];
    lanes[i % kLanes] += diff > 0.0f ? diff : 0.0f;
  }
  return lanes_total(lanes);
}

}  // namespace portable

#if SPECDECODE_X86_SIMD
// SSE2 (every x86-64 CPU): two 4-wide registers make the 8 lanes.
namespace sse2 {

inline __m128 exp4(__m128 x) {
  const __m128 clamped = _mm_max_ps(x, _mm_set1_ps(-87.0f));  // NaN lanes are fixed at the end
  const __m128 round = _mm_set1_ps(12582912.0f);
  const __m128 n = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(clamped, _mm_set1_ps(1.44269504088896341f)), round), round);
  const __m128 r = _mm_sub_ps(_mm_sub_ps(clamped, _mm_mul_ps(n, _mm_set1_ps(0.693359375f))),
                              _mm_mul_ps(n, _mm_set1_ps(-2.12194440e-4f)));
  __m128 poly = _mm_set1_ps(1.0f / 720.0f);
  poly = _mm_add_ps(_mm_mul_ps(poly, r), _mm_set1_ps(1.0f / 120.0f));
  poly = _mm_add_ps(_mm_mul_ps(poly, r), _mm_set1_ps(1.0f / 24.0f));
  poly = _mm_add_ps(_mm_mul_ps(poly, r), _mm_set1_ps(1.0f / 6.0f));
  poly = _mm_add_ps(_mm_mul_ps(poly, r), _mm_set1_ps(0.5f));
  poly = _mm_add_ps(_mm_mul_ps(poly, r), _mm_set1_ps(1.0f));
  poly = _mm_add_ps(_mm_mul_ps(poly, r), _mm_set1_ps(1.0f));
  const __m128i bits = _mm_slli_epi32(_mm_add_epi32(_mm_cvttps_epi32(n), _mm_set1_epi32(127)), 23);
  __m128 value = _mm_mul_ps(poly, _mm_castsi128_ps(bits));
  const __m128 is_number = _mm_cmpord_ps(x, x);
  value = _mm_or_ps(_mm_and_ps(is_number, value), _mm_andnot_ps(is_number, x));  // NaN stays NaN
  return _mm_andnot_ps(_mm_cmplt_ps(x, _mm_set1_ps(-87.0f)), value);  // below -87: 0
}

template <bool kDivide>
inline __m128 load_scaled(const float* x, __m128 t) {
  const __m128 v = _mm_loadu_ps(x);
  return kDivide ? _mm_div_ps(v, t) : v;
}

template <bool kDivide>
float max_scaled_impl(const float* x, int64_t n, float t_value) {
  const __m128 t = _mm_set1_ps(t_value);
  __m128 best = _mm_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) best = _mm_max_ps(load_scaled<kDivide>(x + i, t), best);  // NaN x: keeps best
  float lanes[4];
  _mm_storeu_ps(lanes, best);
  const float head = portable::max_scaled(x + i, n - i, t_value);
  const float low = lanes[0] > lanes[1] ? lanes[0] : lanes[1], high = lanes[2] > lanes[3] ? lanes[2] : lanes[3];
  const float all = low > high ? low : high;
  return head > all ? head : all;
}

inline float max_scaled(const float* x, int64_t n, float t) {
  return t == 1.0f ? max_scaled_impl<false>(x, n, t) : max_scaled_impl<true>(x, n, t);
}

template <bool kDivide>
void exp_sum_impl(const float* x, int64_t n, float t_value, float shift_value, float* lanes) {
  const __m128 t = _mm_set1_ps(t_value), shift = _mm_set1_ps(shift_value);
  __m128 low = _mm_loadu_ps(lanes), high = _mm_loadu_ps(lanes + 4);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m128 e0 = exp4(_mm_sub_ps(load_scaled<kDivide>(x + i, t), shift));
    const __m128 e1 = exp4(_mm_sub_ps(load_scaled<kDivide>(x + i + 4, t), shift));
    low = _mm_add_ps(low, _mm_and_ps(_mm_cmpord_ps(e0, e0), e0));
    high = _mm_add_ps(high, _mm_and_ps(_mm_cmpord_ps(e1, e1), e1));
  }
  _mm_storeu_ps(lanes, low);
  _mm_storeu_ps(lanes + 4, high);
  portable::exp_sum(x + i, n - i, t_value, shift_value, lanes);  // i is a multiple of 8: lanes line up
}

inline void exp_sum(const float* x, int64_t n, float t, float shift, float* lanes) {
  t == 1.0f ? exp_sum_impl<false>(x, n, t, shift, lanes) : exp_sum_impl<true>(x, n, t, shift, lanes);
}

template <bool kDivide>
void probs_impl(const float* x, int64_t n, float t_value, float shift_value, float norm_value, float* out) {
  const __m128 t = _mm_set1_ps(t_value), shift = _mm_set1_ps(shift_value), norm = _mm_set1_ps(norm_value);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(out + i, _mm_mul_ps(exp4(_mm_sub_ps(load_scaled<kDivide>(x + i, t), shift)), norm));
  portable::probs(x + i, n - i, t_value, shift_value, norm_value, out + i);
}

inline void probs(const float* x, int64_t n, float t, float shift, float norm, float* out) {
  t == 1.0f ? probs_impl<false>(x, n, t, shift, norm, out) : probs_impl<true>(x, n, t, shift, norm, out);
}

inline float positive_diff_sum(const float* q, const float* p, int64_t n) {
  __m128 low = _mm_setzero_ps(), high = _mm_setzero_ps();
  const __m128 zero = _mm_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    __m128 d0 = _mm_loadu_ps(q + i), d1 = _mm_loadu_ps(q + i + 4);
    if (p) {
      d0 = _mm_sub_ps(d0, _mm_loadu_ps(p + i));
      d1 = _mm_sub_ps(d1, _mm_loadu_ps(p + i + 4));
    }
    low = _mm_add_ps(low, _mm_and_ps(_mm_cmpgt_ps(d0, zero), d0));  // NaN -> 0
    high = _mm_add_ps(high, _mm_and_ps(_mm_cmpgt_ps(d1, zero), d1));
  }
  float lanes[kLanes];
  _mm_storeu_ps(lanes, low);
  _mm_storeu_ps(lanes + 4, high);
  for (; i < n; ++i) {
    const float diff = p ? q[i] - p[i] : q[i];
    lanes[i % kLanes] += diff > 0.0f ? diff : 0.0f;
  }
  return lanes_total(lanes);
}

}  // namespace sse2

// AVX2: one 8-wide register holds the 8 lanes. Same operations as SSE2 (no FMA), so the same bits.
namespace avx2 {

#define SPECDECODE_AVX2 __attribute__((target("avx2")))

SPECDECODE_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 clamped = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 round = _mm256_set1_ps(12582912.0f);
  const __m256 n =
      _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(clamped, _mm256_set1_ps(1.44269504088896341f)), round), round);
  const __m256 r = _mm256_sub_ps(_mm256_sub_ps(clamped, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f))),
                                 _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
  __m256 poly = _mm256_set1_ps(1.0f / 720.0f);
  poly = _mm256_add_ps(_mm256_mul_ps(poly, r), _mm256_set1_ps(1.0f / 120.0f));
  poly = _mm256_add_ps(_mm256_mul_ps(poly, r), _mm256_set1_ps(1.0f / 24.0f));
  poly = _mm256_add_ps(_mm256_mul_ps(poly, r), _mm256_set1_ps(1.0f / 6.0f));
  poly = _mm256_add_ps(_mm256_mul_ps(poly, r), _mm256_set1_ps(0.5f));
  poly = _mm256_add_ps(_mm256_mul_ps(poly, r), _mm256_set1_ps(1.0f));
  poly = _mm256_add_ps(_mm256_mul_ps(poly, r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 value = _mm256_mul_ps(poly, _mm256_castsi256_ps(bits));
  value = _mm256_blendv_ps(x, value, _mm256_cmp_ps(x, x, _CMP_ORD_Q));  // NaN stays NaN
  return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ), value);  // below -87: 0
}

template <bool kDivide>
SPECDECODE_AVX2 inline __m256 load_scaled(const float* x, __m256 t) {
  const __m256 v = _mm256_loadu_ps(x);
  return kDivide ? _mm256_div_ps(v, t) : v;
}

template <bool kDivide>
SPECDECODE_AVX2 float max_scaled_impl(const float* x, int64_t n, float t_value) {
  const __m256 t = _mm256_set1_ps(t_value);
  __m256 best0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), best1 = best0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    best0 = _mm256_max_ps(load_scaled<kDivide>(x + i, t), best0);  // NaN x: keeps best
    best1 = _mm256_max_ps(load_scaled<kDivide>(x + i + 8, t), best1);
  }
  float lanes[kLanes];
  _mm256_storeu_ps(lanes, _mm256_max_ps(best0, best1));
  float best = portable::max_scaled(x + i, n - i, t_value);
  for (float lane : lanes) best = lane > best ? lane : best;
  return best;
}

SPECDECODE_AVX2 inline float max_scaled(const float* x, int64_t n, float t) {
  return t == 1.0f ? max_scaled_impl<false>(x, n, t) : max_scaled_impl<true>(x, n, t);
}

template <bool kDivide>
SPECDECODE_AVX2 void exp_sum_impl(const float* x, int64_t n, float t_value, float shift_value, float* lanes) {
  const __m256 t = _mm256_set1_ps(t_value), shift = _mm256_set1_ps(shift_value);
  __m256 sum = _mm256_loadu_ps(lanes);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 e = exp8(_mm256_sub_ps(load_scaled<kDivide>(x + i, t), shift));
    sum = _mm256_add_ps(sum, _mm256_and_ps(_mm256_cmp_ps(e, e, _CMP_ORD_Q), e));
  }
  _mm256_storeu_ps(lanes, sum);
  portable::exp_sum(x + i, n - i, t_value, shift_value, lanes);
}

SPECDECODE_AVX2 inline void exp_sum(const float* x, int64_t n, float t, float shift, float* lanes) {
  t == 1.0f ? exp_sum_impl<false>(x, n, t, shift, lanes) : exp_sum_impl<true>(x, n, t, shift, lanes);
}

template <bool kDivide>
SPECDECODE_AVX2 void probs_impl(const float* x, int64_t n, float t_value, float shift_value, float norm_value,
                                float* out) {
  const __m256 t = _mm256_set1_ps(t_value), shift = _mm256_set1_ps(shift_value), norm = _mm256_set1_ps(norm_value);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    _mm256_storeu_ps(out + i, _mm256_mul_ps(exp8(_mm256_sub_ps(load_scaled<kDivide>(x + i, t), shift)), norm));
  }
  portable::probs(x + i, n - i, t_value, shift_value, norm_value, out + i);
}

SPECDECODE_AVX2 inline void probs(const float* x, int64_t n, float t, float shift, float norm, float* out) {
  t == 1.0f ? probs_impl<false>(x, n, t, shift, norm, out) : probs_impl<true>(x, n, t, shift, norm, out);
}

SPECDECODE_AVX2 inline float positive_diff_sum(const float* q, const float* p, int64_t n) {
  __m256 sum = _mm256_setzero_ps();
  const __m256 zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    __m256 d = _mm256_loadu_ps(q + i);
    if (p) d = _mm256_sub_ps(d, _mm256_loadu_ps(p + i));
    sum = _mm256_add_ps(sum, _mm256_and_ps(_mm256_cmp_ps(d, zero, _CMP_GT_OQ), d));  // NaN -> 0
  }
  float lanes[kLanes];
  _mm256_storeu_ps(lanes, sum);
  for (; i < n; ++i) {
    const float diff = p ? q[i] - p[i] : q[i];
    lanes[i % kLanes] += diff > 0.0f ? diff : 0.0f;
  }
  return lanes_total(lanes);
}

#undef SPECDECODE_AVX2

}  // namespace avx2
#endif  // SPECDECODE_X86_SIMD

// The kernels for this CPU, chosen on first use.
inline const RowKernels& kernels() {
  static const RowKernels chosen = [] {
#if SPECDECODE_X86_SIMD
    __builtin_cpu_init();
    const char* forced = std::getenv("SPECDECODE_CPU_KERNELS");
    const bool baseline = forced != nullptr && std::strcmp(forced, "baseline") == 0;
    if (!baseline && __builtin_cpu_supports("avx2")) {
      return RowKernels{avx2::max_scaled, avx2::exp_sum, avx2::probs, avx2::positive_diff_sum};
    }
    return RowKernels{sse2::max_scaled, sse2::exp_sum, sse2::probs, sse2::positive_diff_sum};
#else
    return RowKernels{portable::max_scaled, portable::exp_sum, portable::probs, portable::positive_diff_sum};
#endif
  }();
  return chosen;
}

// `n` elements of a row as float32: the row itself, or converted into `buffer`.
template <typename scalar_t>
const float* as_float(const scalar_t* x, int64_t n, float* buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return x;
  } else {
    for (int64_t i = 0; i < n; ++i) buffer[i] = static_cast<float>(x[i]);
    return buffer;
  }
}

struct SoftmaxStats {
  float max;  // max of row / t, NaN ignored (-inf if the row has no number)
  float inv_sum;  // 1 / sum(exp(row / t - max)), NaN counted 0
};

// softmax(row / t)'s statistics in one pass over the row: per 4 KiB chunk its max, then the sum
// of exp relative to the running max (the chunk is still in L1); a larger max rescales the sum
// so far by exp(old max - new max). The max is exactly the row's.
template <typename scalar_t>
SoftmaxStats softmax_stats(const scalar_t* row, int64_t n, float t) {
  const RowKernels& k = kernels();
  float buffer[std::is_same_v<scalar_t, float> ? 1 : kSoftmaxChunk];
  float running_max = -std::numeric_limits<float>::infinity();
  double total = 0.0;
  for (int64_t begin = 0; begin < n; begin += kSoftmaxChunk) {
    const int64_t length = std::min(kSoftmaxChunk, n - begin);
    const float* x = as_float(row + begin, length, buffer);
    const float chunk_max = k.max_scaled(x, length, t);
    if (chunk_max > running_max) {
      total *= exp_nonpositive(running_max - chunk_max);  // 0 when the old max was -inf
      running_max = chunk_max;
    }
    float lanes[kLanes] = {};
    k.exp_sum(x, length, t, running_max, lanes);
    total += lanes_total(lanes);
  }
  return {running_max, static_cast<float>(1.0 / total)};
}

}  // namespace sampling
}  // namespace specdecode
