// CPU kernel of torch.ops.specdecode.rejection_sample_ragged: lossless speculative sampling on
// vLLM's flattened layout (drafts [N] with running totals per request), from probabilities or
// from logits. The algorithm is specdecode/reference/rejection_sample_ragged.py; the chain itself
// is chain::verify_chain (csrc/rejection_core.h), shared with the padded op. OpenMP across requests.
// From logits, a row's softmax statistics (max, 1 / sum) are computed in one pass when the row is
// first needed, and probabilities are recomputed from the logits where they are read: [N, V]
// probabilities are never stored. The row kernels (exp, sums) are sampling.h's: AVX2 when the CPU
// has it, SSE2 otherwise, the same bits either way.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "rejection_core.h"
#include "sampling.h"

namespace specdecode {
namespace {

using sampling::exp_nonpositive;
using sampling::kScanBlock;
using sampling::positive_part;

constexpr const char* kOp = "rejection_sample_ragged";

// float32, float16 and bfloat16 only (the checks reject the rest): 9 target x draft instantiations.
#define RAGGED_DISPATCH_FLOATS(TYPE, NAME, ...)                         \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// One vocabulary row as a distribution: probabilities as given, or softmax(logits / T), whose
// statistics `prepare()` computes. prob(v) is what every comparison and weight reads.
template <typename scalar_t>
struct Distribution {
  const scalar_t* data = nullptr;
  int64_t vocab_size = 0;
  bool is_logits = false;
  float temperature = 1.0f;
  float max = 0.0f;  // max of logits / T (NaN ignored)
  float inv_sum = 1.0f;  // 1 / sum(exp(logits / T - max))

  float scaled(int64_t v) const { return static_cast<float>(data[v]) / temperature; }

  float prob(int64_t v) const {
    return is_logits ? exp_nonpositive(scaled(v) - max) * inv_sum : static_cast<float>(data[v]);
  }

  // probs[v - begin] = prob(v) on one block (at most kScanBlock long), vectorised.
  void probs(int64_t begin, int64_t end, float* out) const {
    const int64_t n = end - begin;
    if (is_logits) {
      float buffer[std::is_same_v<scalar_t, float> ? 1 : kScanBlock];
      sampling::kernels().probs(sampling::as_float(data + begin, n, buffer), n, temperature, max, inv_sum, out);
    } else {
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(data[begin + i]);
    }
  }

  // prob(v) for v in [begin, end) as a float array: the row itself (float32 probabilities), or
  // computed into `buffer`.
  const float* block(int64_t begin, int64_t end, float* buffer) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (!is_logits) return data + begin;
    }
    probs(begin, end, buffer);
    return buffer;
  }

  // The softmax statistics, in one pass over the row (sampling::softmax_stats).
  void prepare() {
    if (!is_logits) return;
    const sampling::SoftmaxStats stats = sampling::softmax_stats(data, vocab_size, temperature);
    max = stats.max;
    inv_sum = stats.inv_sum;
  }
};

// w(v) = max(0, q(v) - p(v) - [v == one_hot_id]), NaN -> 0, for sampling::sample_inverse_cdf.
// p is the dense draft row or nullptr; one_hot_id >= 0 for draft-probability-free proposers.
template <typename target_t, typename draft_t>
struct Weights {
  const Distribution<target_t>& q;
  const Distribution<draft_t>* p;
  int64_t one_hot_id;

  float operator()(int64_t v) const {
    float diff = q.prob(v);
    if (p != nullptr) diff -= p->prob(v);
    return positive_part(diff - (v == one_hot_id ? 1.0f : 0.0f));
  }

  double block_sum(int64_t begin, int64_t end) const {
    if (one_hot_id >= begin && one_hot_id < end) return exact_sum(begin, end);
    float q_block[kScanBlock], p_block[kScanBlock];
    const float* q_values = q.block(begin, end, q_block);
    const float* p_values = p != nullptr ? p->block(begin, end, p_block) : nullptr;
    const float sum = sampling::kernels().positive_diff_sum(q_values, p_values, end - begin);
    if (std::isinf(sum)) return exact_sum(begin, end);  // unnormalised huge rows: redo in double
    return sum;
  }

 private:
  double exact_sum(int64_t begin, int64_t end) const {
    double sum = 0.0;
    for (int64_t v = begin; v < end; ++v) sum += (*this)(v);
    return sum;
  }
};

// An int32 or int64 index tensor, read as int64.
struct IndexView {
  const void* data = nullptr;
  bool is_int64 = true;
  int64_t operator[](int64_t i) const {
    return is_int64 ? static_cast<const int64_t*>(data)[i] : static_cast<const int32_t*>(data)[i];
  }
};

IndexView index_view(const at::Tensor& t) { return {t.data_ptr(), t.scalar_type() == at::kLong}; }

template <typename target_t, typename draft_t>
struct RaggedArgs {
  IndexView draft_ids, cu_num_draft_tokens, bonus_ids;  // bonus_ids.data == nullptr: drawn here
  const draft_t* draft;  // [N, V] or nullptr
  const target_t* target;  // [N, V] or [N + B, V]
  const bool* greedy;
  const float* temperature;  // [B] or nullptr (probabilities)
  const int64_t* seeds;
  const int64_t* offsets;
  int64_t num_seeds, num_offsets, num_tokens, vocab_size, max_num_draft_tokens;
  int64_t draft_stride, target_stride;
  bool interleaved, draft_is_logits, target_is_logits;
};

// One request: where its rows live, and its rows as distributions (chain::verify_chain's Request).
template <typename target_t, typename draft_t>
class RaggedRequest {
 public:
  RaggedRequest(const RaggedArgs<target_t, draft_t>& a, int64_t b, std::vector<double>& scratch)
      : a_(a), b_(b), scratch_(scratch) {
    // Bounds clamped so that even unchecked values (the Triton kernel does the same) read inside
    // the tensors; the CPU op has checked them already.
    const int64_t end = std::clamp<int64_t>(a.cu_num_draft_tokens[b], 0, a.num_tokens);
    start_ = b == 0 ? 0 : std::clamp<int64_t>(a.cu_num_draft_tokens[b - 1], 0, end);
    num_drafts_ = std::min(end - start_, a.max_num_draft_tokens);
    first_target_row_ = start_ + (a.interleaved ? b : 0);
    temperature_ = a.temperature ? a.temperature[b] : 1.0f;
    greedy_ = a.greedy[b] || (a.temperature != nullptr && !(temperature_ > 0.0f));
  }

  int64_t num_drafts() const { return num_drafts_; }
  bool greedy() const { return greedy_; }
  int64_t draft(int64_t i) const { return a_.draft_ids[start_ + i]; }
  bool has_bonus_id() const { return a_.bonus_ids.data != nullptr; }
  int64_t bonus_id() const {
    const int64_t id = a_.bonus_ids[b_];
    return chain::in_vocab(id, a_.vocab_size) ? id : 0;
  }

  // Cached: a greedy chain reads the argmax of the row it stops at twice (compare, then emit).
  int64_t target_argmax(int64_t i) {
    if (argmax_index_ != i) {
      argmax_ = sampling::nan_safe_argmax(target_row(i), a_.vocab_size);
      argmax_index_ = i;
    }
    return argmax_;
  }

  bool accepts(int64_t i, int64_t x, float u) {
    const float p_x = a_.draft ? draft_dist(i).prob(x) : 1.0f;
    return u * p_x < target_dist(i).prob(x);  // strict: q(x) = 0 never passes, even at u = 0
  }

  int64_t sample(int64_t j, bool residual, float u) {
    const Distribution<target_t>& q = target_dist(j);
    const Distribution<draft_t>* p = residual && a_.draft ? &draft_dist(j) : nullptr;
    const int64_t one_hot_id = residual && !a_.draft ? draft(j) : -1;
    return sampling::sample_inverse_cdf(Weights<target_t, draft_t>{q, p, one_hot_id}, a_.vocab_size, u, scratch_);
  }

 private:
  const target_t* target_row(int64_t i) const { return a_.target + (first_target_row_ + i) * a_.target_stride; }

  // The row's distribution, its softmax statistics computed once (the chain reads row j for
  // acceptance, then again to sample the emitted token).
  const Distribution<target_t>& target_dist(int64_t i) {
    if (target_index_ != i) {
      target_ = {target_row(i), a_.vocab_size, a_.target_is_logits, temperature_};
      target_.prepare();
      target_index_ = i;
    }
    return target_;
  }
  const Distribution<draft_t>& draft_dist(int64_t i) {
    if (draft_index_ != i) {
      draft_ = {a_.draft + (start_ + i) * a_.draft_stride, a_.vocab_size, a_.draft_is_logits, temperature_};
      draft_.prepare();
      draft_index_ = i;
    }
    return draft_;
  }

  const RaggedArgs<target_t, draft_t>& a_;
  int64_t b_;
  std::vector<double>& scratch_;
  int64_t start_ = 0, num_drafts_ = 0, first_target_row_ = 0;
  float temperature_ = 1.0f;
  bool greedy_ = false;
  Distribution<target_t> target_;
  Distribution<draft_t> draft_;
  int64_t target_index_ = -1, draft_index_ = -1;
  int64_t argmax_index_ = -1, argmax_ = 0;
};

template <typename target_t, typename draft_t, typename out_t>
void verify_requests(const RaggedArgs<target_t, draft_t>& a, int64_t batch_size, out_t* token_ids,
                     out_t* num_accepted) {
  const int64_t width = a.max_num_draft_tokens + 1;
  at::parallel_for(0, batch_size, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> scratch;  // block sums, reused across this thread's requests
    for (int64_t b = begin; b < end; ++b) {
      RaggedRequest<target_t, draft_t> request(a, b, scratch);
      const chain::Stream stream{static_cast<uint64_t>(a.seeds[a.num_seeds == 1 ? 0 : b]),
                                 static_cast<uint64_t>(a.offsets[a.num_offsets == 1 ? 0 : b]),
                                 a.num_seeds == 1 ? static_cast<uint32_t>(b) : 0u};
      const chain::Outcome outcome =
          chain::verify_chain(request, stream, request.num_drafts(), a.vocab_size, request.greedy());
      chain::write_tokens(token_ids + b * width, request, outcome, width);
      num_accepted[b] = static_cast<out_t>(outcome.num_accepted);
    }
  });
}

// ------------------------------------------------------------------------------------------
// Checks: the raw op is called directly by serving engines, so it checks what memory safety and
// a clear error need. Index values live on the host here, so checking them is free.
// ------------------------------------------------------------------------------------------

bool is_index_dtype(at::ScalarType t) { return t == at::kInt || t == at::kLong; }
bool is_float_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_index_vector(const char* name, const at::Tensor& t, int64_t length) {
  TORCH_CHECK(t.dim() == 1 && is_index_dtype(t.scalar_type()) && t.is_contiguous() && (length < 0 || t.size(0) == length),
              kOp, ": ", name, " must be a contiguous 1-D int32/int64 tensor", length >= 0 ? " of length " : "",
              length >= 0 ? std::to_string(length) : std::string(), ", got ", t.scalar_type(), " of shape ", t.sizes());
}

void check_rows(const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2 && is_float_dtype(t.scalar_type()), kOp, ": ", name,
              " must be a 2-D float32/float16/bfloat16 tensor, got ", t.scalar_type(), " of shape ", t.sizes());
  TORCH_CHECK(t.size(1) == 1 || t.stride(1) == 1, kOp, ": ", name, " must have unit stride in V, got strides ",
              t.strides());
}

void check_request_values(const at::Tensor& cu, int64_t num_tokens, int64_t max_num_draft_tokens) {
  const IndexView view = index_view(cu);
  int64_t previous = 0;
  for (int64_t b = 0; b < cu.size(0); ++b) {
    const int64_t end = view[b];
    TORCH_CHECK(end >= previous, kOp, ": cu_num_draft_tokens must be non-decreasing running totals from 0, got ",
                end, " at index ", b, " after ", previous);
    TORCH_CHECK(end - previous <= max_num_draft_tokens, kOp, ": request ", b, " has ", end - previous,
                " draft tokens (cu_num_draft_tokens) but max_num_draft_tokens = ", max_num_draft_tokens);
    previous = end;
  }
  TORCH_CHECK(previous == num_tokens, kOp, ": cu_num_draft_tokens must end at N = ", num_tokens,
              " (draft_token_ids), got ", previous);
}

struct RaggedInputs {
  const at::Tensor& draft_token_ids;
  const at::Tensor& cu_num_draft_tokens;
  const std::optional<at::Tensor>& draft;
  const at::Tensor& target;
  const std::optional<at::Tensor>& bonus_token_ids;
  const at::Tensor& greedy;
  const std::optional<at::Tensor>& temperature;
  const at::Tensor& seeds;
  const at::Tensor& offsets;
  int64_t max_num_draft_tokens;
  bool draft_is_logits, target_is_logits;
  at::ScalarType out_dtype;
};

void check_inputs(const RaggedInputs& in) {
  check_same_device(kOp, {{"draft_token_ids", &in.draft_token_ids},
                          {"cu_num_draft_tokens", &in.cu_num_draft_tokens},
                          {"draft", optional_ptr(in.draft)},
                          {"target", &in.target},
                          {"bonus_token_ids", optional_ptr(in.bonus_token_ids)},
                          {"greedy", &in.greedy},
                          {"temperature", optional_ptr(in.temperature)},
                          {"seeds", &in.seeds},
                          {"offsets", &in.offsets}});
  check_index_vector("draft_token_ids", in.draft_token_ids, -1);
  check_index_vector("cu_num_draft_tokens", in.cu_num_draft_tokens, -1);
  const int64_t N = in.draft_token_ids.size(0), B = in.cu_num_draft_tokens.size(0);
  TORCH_CHECK(in.max_num_draft_tokens >= 0, kOp, ": max_num_draft_tokens must be >= 0, got ", in.max_num_draft_tokens);
  TORCH_CHECK(in.out_dtype == at::kInt || in.out_dtype == at::kLong, kOp, ": out_dtype must be int32 or int64, got ",
              in.out_dtype);
  check_rows("target", in.target);
  const int64_t V = in.target.size(1);
  TORCH_CHECK(V > 0 && V < (int64_t{1} << 31), kOp, ": target must have 0 < V < 2^31, got V = ", V);
  TORCH_CHECK(in.target.size(0) == N + B || (in.target.size(0) == N && in.bonus_token_ids), kOp,
              ": target must have N + B = ", N + B, " rows (draft rows and a bonus row per request), or N = ", N,
              " rows with bonus_token_ids given; got ", in.target.size(0), " rows");
  if (in.draft) {
    check_rows("draft", *in.draft);
    TORCH_CHECK(in.draft->size(0) == N && in.draft->size(1) == V, kOp, ": draft must be [N, V] = [", N, ", ", V,
                "], got ", in.draft->sizes());
  }
  if (in.bonus_token_ids) check_index_vector("bonus_token_ids", *in.bonus_token_ids, B);
  TORCH_CHECK(in.greedy.dim() == 1 && in.greedy.size(0) == B && in.greedy.scalar_type() == at::kBool &&
                  in.greedy.is_contiguous(),
              kOp, ": greedy must be a contiguous [B] = [", B, "] bool tensor, got ", in.greedy.scalar_type(),
              " of shape ", in.greedy.sizes());
  const bool any_logits = in.target_is_logits || (in.draft && in.draft_is_logits);
  TORCH_CHECK(any_logits == in.temperature.has_value(), kOp,
              ": temperature must be given exactly when target or draft holds logits");
  if (in.temperature) {
    const at::Tensor& t = *in.temperature;
    TORCH_CHECK(t.dim() == 1 && t.size(0) == B && t.scalar_type() == at::kFloat && t.is_contiguous(), kOp,
                ": temperature must be a contiguous [B] = [", B, "] float32 tensor, got ", t.scalar_type(),
                " of shape ", t.sizes());
  }
  for (const NamedTensor& named : {NamedTensor{"seeds", &in.seeds}, NamedTensor{"offsets", &in.offsets}}) {
    const at::Tensor& t = *named.second;
    TORCH_CHECK(t.dim() == 1 && (t.size(0) == 1 || t.size(0) == B) && t.scalar_type() == at::kLong &&
                    t.is_contiguous(),
                kOp, ": ", named.first, " must be a contiguous int64 tensor of shape [1] or [B] = [", B, "], got ",
                t.scalar_type(), " of shape ", t.sizes());
  }
  if (in.target.device().is_cpu()) {
    check_request_values(in.cu_num_draft_tokens, N, in.max_num_draft_tokens);
    if (in.bonus_token_ids) {
      const IndexView bonus = index_view(*in.bonus_token_ids);
      for (int64_t b = 0; b < B; ++b) {
        TORCH_CHECK(chain::in_vocab(bonus[b], V), kOp, ": bonus_token_ids[", b, "] = ", bonus[b],
                    " is outside [0, V) with V = ", V);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> rejection_sample_ragged_cpu(
    const at::Tensor& draft_token_ids, const at::Tensor& cu_num_draft_tokens, const std::optional<at::Tensor>& draft,
    const at::Tensor& target, const std::optional<at::Tensor>& bonus_token_ids, const at::Tensor& greedy,
    const std::optional<at::Tensor>& temperature, const at::Tensor& seeds, const at::Tensor& offsets,
    int64_t max_num_draft_tokens, bool draft_is_logits, bool target_is_logits, at::ScalarType out_dtype) {
  const RaggedInputs in{draft_token_ids, cu_num_draft_tokens, draft,   target,
                        bonus_token_ids, greedy,              temperature, seeds,
                        offsets,         max_num_draft_tokens, draft_is_logits, target_is_logits,
                        out_dtype};
  check_inputs(in);
  const int64_t N = draft_token_ids.size(0), B = cu_num_draft_tokens.size(0), V = target.size(1);
  const auto options = draft_token_ids.options().dtype(out_dtype);
  auto token_ids = at::empty({B, max_num_draft_tokens + 1}, options);
  auto num_accepted = at::empty({B}, options);
  const at::ScalarType draft_dtype = draft ? draft->scalar_type() : target.scalar_type();
  RAGGED_DISPATCH_FLOATS(target.scalar_type(), "ragged_target", [&] {
    using target_t = scalar_t;
    RAGGED_DISPATCH_FLOATS(draft_dtype, "ragged_draft", [&] {
      using draft_t = scalar_t;
      const RaggedArgs<target_t, draft_t> args{
          index_view(draft_token_ids),
          index_view(cu_num_draft_tokens),
          bonus_token_ids ? index_view(*bonus_token_ids) : IndexView{nullptr, true},
          draft ? draft->data_ptr<draft_t>() : nullptr,
          target.data_ptr<target_t>(),
          greedy.data_ptr<bool>(),
          temperature ? temperature->data_ptr<float>() : nullptr,
          seeds.data_ptr<int64_t>(),
          offsets.data_ptr<int64_t>(),
          seeds.size(0),
          offsets.size(0),
          N,
          V,
          max_num_draft_tokens,
          draft ? draft->stride(0) : 0,
          target.stride(0),
          target.size(0) == N + B && B > 0,
          draft_is_logits,
          target_is_logits};
      if (out_dtype == at::kInt) {
        verify_requests(args, B, token_ids.data_ptr<int32_t>(), num_accepted.data_ptr<int32_t>());
      } else {
        verify_requests(args, B, token_ids.data_ptr<int64_t>(), num_accepted.data_ptr<int64_t>());
      }
    });
  });
  return {token_ids, num_accepted};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specdecode, m) {
  m.def(
      "rejection_sample_ragged(Tensor draft_token_ids, Tensor cu_num_draft_tokens, Tensor? draft, Tensor target, "
      "Tensor? bonus_token_ids, Tensor greedy, Tensor? temperature, Tensor seeds, Tensor offsets, "
      "int max_num_draft_tokens, bool draft_is_logits, bool target_is_logits, ScalarType out_dtype) "
      "-> (Tensor token_ids, Tensor num_accepted)");
}

TORCH_LIBRARY_IMPL(specdecode, CPU, m) { m.impl("rejection_sample_ragged", &rejection_sample_ragged_cpu); }

}  // namespace specdecode
