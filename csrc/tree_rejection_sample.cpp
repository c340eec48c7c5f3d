// CPU kernel of torch.ops.specdecode.tree_rejection_sample: token-tree verification.
// The algorithm is specdecode/reference/tree_rejection_sample.py (read its docstring first): one
// pass over the nodes in index order walks down the tree, trying each live child of the current
// node; a sibling group's updated target q' = max(0, q - c p) / S is kept as the scalars
// (c, S, P), so nothing vocabulary-wide is stored. OpenMP across rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "checks.h"
#include "philox.h"
#include "sampling.h"

namespace specdecode {
namespace {

using sampling::kScanBlock;
using sampling::positive_part;

constexpr int64_t kRoot = -1;  // parents[i] == kRoot: node i is a child of the root
constexpr int64_t kNoNode = -1;  // padding of accepted_nodes / token_ids

// w(v) = max(0, q(v) - c p(v)) (NaN -> 0), or max(0, q(v)) when !kDense, and 0 at the excluded
// ids (the current node's rejected children). Same float ops as the reference and Triton.
template <typename scalar_t, bool kDense>
struct TreeResidualWeights {
  const scalar_t* q;
  const scalar_t* p;
  float c;
  const std::vector<int64_t>& excluded;

  float operator()(int64_t v) const {
    if (std::find(excluded.begin(), excluded.end(), v) != excluded.end()) return 0.0f;
    return unmasked(v);
  }

  // Blocks holding no excluded id stream without the id compare.
  double block_sum(int64_t begin, int64_t end) const {
    const bool holds_excluded =
        std::any_of(excluded.begin(), excluded.end(), [&](int64_t id) { return id >= begin && id < end; });
    if (!holds_excluded) {
      // Locals, not members, in the loop: with members GCC kept it scalar and branchy (10x slower).
      const scalar_t* q_row = q;
      const scalar_t* p_row = p;
      const float scale = c;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t v = begin; v < end; ++v) {
        float diff = static_cast<float>(q_row[v]);
        if constexpr (kDense) diff = diff - scale * static_cast<float>(p_row[v]);
        sum += diff > 0.0f ? diff : 0.0f;  // NaN -> 0
      }
      if (!std::isinf(sum)) return sum;  // a float sum can overflow on unnormalised rows: redo in double
    }
    double sum = 0.0;
    for (int64_t v = begin; v < end; ++v) sum += (*this)(v);
    return sum;
  }

  float unmasked(int64_t v) const {
    float diff = static_cast<float>(q[v]);
    if constexpr (kDense) diff = diff - c * static_cast<float>(p[v]);
    return positive_part(diff);
  }
};

template <typename scalar_t>
struct TreeArgs {
  const int64_t* draft_ids;  // [B, T] contiguous
  const int64_t* parents;  // [B, T] contiguous
  const scalar_t* draft_probs;  // [B, T, V] or nullptr
  const scalar_t* target_probs;  // [B, T+1, V]
  const bool* greedy;  // [B]
  const int64_t* seeds;  // [1] or [B]
  const int64_t* offsets;  // [1] or [B]
  bool without_replacement;
  int64_t num_seeds, num_offsets, num_nodes, vocab_size;
  int64_t draft_stride_b, draft_stride_t, target_stride_b, target_stride_t;
  int64_t* token_ids;  // [B, T+1]
  int64_t* accepted_nodes;  // [B, T]
  int64_t* num_accepted;  // [B]
};

// The state of the current node's sibling group: q' = max(0, q - c p) / mass, `removed` = the
// draft mass taken out by rejections without replacement, p = the first live child's draft row.
struct SiblingGroup {
  float c = 0.0f, mass = 1.0f, removed = 0.0f;
  bool mass_is_stale = false;
  int64_t draft_row_node = kNoNode;
  int64_t argmax = kNoNode;  // greedy rows: argmax q, computed when the first child is tried
};

template <typename scalar_t>
class RowVerifier {
 public:
  RowVerifier(const TreeArgs<scalar_t>& args, int64_t row, std::vector<double>& scratch)
      : a_(args), b_(row), scratch_(scratch), ids_(args.draft_ids + row * args.num_nodes),
        parents_(args.parents + row * args.num_nodes) {}

  void run() {
    const int64_t T = a_.num_nodes;
    int64_t current = kRoot, accepted = 0;
    SiblingGroup group;
    int64_t* path = a_.accepted_nodes + b_ * T;
    // Children have larger indices than their parents: one pass meets every child of every
    // node the walk reaches, in index order.
    for (int64_t j = 0; j < T; ++j) {
      if (!is_live(j) || parents_[j] != current) continue;
      if (try_child(j, current, group)) {
        path[accepted++] = j;
        current = j;
        group = SiblingGroup{};
      }
    }
    const int64_t emitted = emit(current, group);
    int64_t* out = a_.token_ids + b_ * (T + 1);
    for (int64_t i = 0; i <= T; ++i) out[i] = i < accepted ? ids_[path[i]] : (i == accepted ? emitted : kNoNode);
    for (int64_t i = accepted; i < T; ++i) path[i] = kNoNode;
    a_.num_accepted[b_] = accepted;
  }

 private:
  bool is_live(int64_t j) const {
    return ids_[j] >= 0 && ids_[j] < a_.vocab_size && parents_[j] >= kRoot && parents_[j] < j;
  }
  const scalar_t* target_row(int64_t node) const {
    return a_.target_probs + b_ * a_.target_stride_b + (node + 1) * a_.target_stride_t;
  }
  const scalar_t* draft_row(int64_t node) const {
    return a_.draft_probs + b_ * a_.draft_stride_b + node * a_.draft_stride_t;
  }
  float uniform(int64_t slot) const {
    const uint64_t seed = static_cast<uint64_t>(a_.seeds[a_.num_seeds == 1 ? 0 : b_]);
    const uint64_t offset = static_cast<uint64_t>(a_.offsets[a_.num_offsets == 1 ? 0 : b_]);
    const uint32_t stream_row = a_.num_seeds == 1 ? static_cast<uint32_t>(b_) : 0u;
    return uniform_from_word(philox_first_word(seed, static_cast<uint32_t>(slot), stream_row,
                                               static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)));
  }
  // An earlier live sibling of j carries j's token (iid siblings may repeat one).
  bool repeats_earlier_sibling(int64_t j, int64_t parent) const {
    for (int64_t k = parent + 1; k < j; ++k) {
      if (is_live(k) && parents_[k] == parent && ids_[k] == ids_[j]) return true;
    }
    return false;
  }

  // Acceptance test of live child j of `current`; on rejection, updates q' (and p').
  bool try_child(int64_t j, int64_t current, SiblingGroup& g) {
    const int64_t x = ids_[j];
    const scalar_t* q = target_row(current);
    if (g.draft_row_node == kNoNode) g.draft_row_node = j;
    if (a_.greedy[b_]) {
      if (g.argmax == kNoNode) g.argmax = sampling::nan_safe_argmax(q, a_.vocab_size);
      return x == g.argmax;
    }
    const bool repeated = repeats_earlier_sibling(j, current);
    const float q_x = static_cast<float>(q[x]);
    const float u = uniform(j);
    if (a_.draft_probs == nullptr) {  // q'(x) = r(x) / mass; the rejected token leaves q'
      const float r_x = repeated ? 0.0f : q_x;
      if (u * g.mass < r_x) return true;
      g.mass = g.mass - positive_part(r_x);
      return false;
    }
    const scalar_t* p = draft_row(g.draft_row_node);
    if (g.mass_is_stale) {
      std::vector<int64_t> none;
      const TreeResidualWeights<scalar_t, true> residual{q, p, g.c, none};
      double total = 0.0;
      for (int64_t begin = 0; begin < a_.vocab_size; begin += kScanBlock) {
        total += residual.block_sum(begin, std::min(a_.vocab_size, begin + kScanBlock));
      }
      g.mass = static_cast<float>(total);
      g.mass_is_stale = false;
    }
    const float p_x = static_cast<float>(p[x]);
    const float r_x = repeated ? 0.0f : (g.c == 0.0f ? q_x : q_x - g.c * p_x);
    const float p_removed = (a_.without_replacement && repeated) ? 0.0f : p_x;
    if ((u * p_removed) * g.mass < r_x * (1.0f - g.removed)) return true;  // strict: q'(x) = 0 never passes
    g.c = g.c + g.mass / (1.0f - g.removed);
    if (a_.without_replacement) g.removed = g.removed + p_removed;
    g.mass_is_stale = true;
    return false;
  }

  // The token emitted at the final node: argmax (greedy), else a sample of q' without the
  // rejected children; then the whole target row; then token 0.
  int64_t emit(int64_t node, const SiblingGroup& g) {
    const int64_t V = a_.vocab_size;
    const scalar_t* q = target_row(node);
    if (a_.greedy[b_]) return sampling::nan_safe_argmax(q, V);
    std::vector<int64_t> rejected;
    for (int64_t k = node + 1; k < a_.num_nodes; ++k) {
      if (is_live(k) && parents_[k] == node) rejected.push_back(ids_[k]);
    }
    const float u = uniform(a_.num_nodes);
    int64_t emitted;
    if (a_.draft_probs != nullptr && g.c != 0.0f) {
      emitted = sampling::sample_inverse_cdf(
          TreeResidualWeights<scalar_t, true>{q, draft_row(g.draft_row_node), g.c, rejected}, V, u, scratch_);
    } else {
      emitted = sampling::sample_inverse_cdf(TreeResidualWeights<scalar_t, false>{q, nullptr, 0.0f, rejected}, V, u,
                                             scratch_);
    }
    if (emitted < 0) {  // no residual mass: the target row
      const std::vector<int64_t> none;
      emitted = sampling::sample_inverse_cdf(TreeResidualWeights<scalar_t, false>{q, nullptr, 0.0f, none}, V, u,
                                             scratch_);
    }
    return emitted < 0 ? 0 : emitted;  // no positive mass anywhere (NaN/zero row): stay in [0, V)
  }

  const TreeArgs<scalar_t>& a_;
  const int64_t b_;
  std::vector<double>& scratch_;
  const int64_t* ids_;
  const int64_t* parents_;
};

bool is_probability_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
}

// Unit stride along V, or V == 1 (a size-1 dim's stride is never used to address anything).
bool streams_vocab(const at::Tensor& probs) { return probs.size(2) == 1 || probs.stride(2) == 1; }

void check_inputs(const at::Tensor& draft_ids, const at::Tensor& parents, const std::optional<at::Tensor>& draft_probs,
                  const at::Tensor& target_probs, const at::Tensor& greedy, const at::Tensor& seeds,
                  const at::Tensor& offsets) {
  constexpr const char* kOp = "tree_rejection_sample";
  check_same_device(kOp, {{"draft_token_ids", &draft_ids},
                          {"parents", &parents},
                          {"draft_probs", optional_ptr(draft_probs)},
                          {"target_probs", &target_probs},
                          {"greedy", &greedy},
                          {"seeds", &seeds},
                          {"offsets", &offsets}});
  TORCH_CHECK(draft_ids.dim() == 2 && draft_ids.scalar_type() == at::kLong && draft_ids.is_contiguous(), kOp,
              ": draft_token_ids must be a contiguous [B, T] int64 tensor, got ", draft_ids.scalar_type(),
              " of shape ", draft_ids.sizes());
  const int64_t B = draft_ids.size(0), T = draft_ids.size(1);
  TORCH_CHECK(parents.sizes() == draft_ids.sizes() && parents.scalar_type() == at::kLong && parents.is_contiguous(),
              kOp, ": parents must be a contiguous [B, T] = [", B, ", ", T, "] int64 tensor, got ",
              parents.scalar_type(), " of shape ", parents.sizes());
  TORCH_CHECK(target_probs.dim() == 3 && target_probs.size(0) == B && target_probs.size(1) == T + 1, kOp,
              ": target_probs must be [B, T+1, V] = [", B, ", ", T + 1, ", V], got ", target_probs.sizes());
  TORCH_CHECK(is_probability_dtype(target_probs.scalar_type()), kOp, ": target_probs must be floating point, got ",
              target_probs.scalar_type());
  TORCH_CHECK(target_probs.size(2) > 0 && target_probs.size(2) < (int64_t{1} << 31), kOp,
              ": target_probs must have 0 < V < 2^31, got V = ", target_probs.size(2));
  TORCH_CHECK(streams_vocab(target_probs), kOp, ": target_probs must have unit stride in V, got strides ",
              target_probs.strides());
  if (draft_probs) {
    TORCH_CHECK(draft_probs->dim() == 3 && draft_probs->size(0) == B && draft_probs->size(1) == T &&
                    draft_probs->size(2) == target_probs.size(2),
                kOp, ": draft_probs must be [B, T, V] = [", B, ", ", T, ", ", target_probs.size(2), "], got ",
                draft_probs->sizes());
    TORCH_CHECK(streams_vocab(*draft_probs), kOp, ": draft_probs must have unit stride in V, got strides ",
                draft_probs->strides());
    TORCH_CHECK(draft_probs->scalar_type() == target_probs.scalar_type(), kOp, ": draft_probs (",
                draft_probs->scalar_type(), ") and target_probs (", target_probs.scalar_type(), ") dtypes differ");
  }
  TORCH_CHECK(greedy.dim() == 1 && greedy.size(0) == B && greedy.scalar_type() == at::kBool && greedy.is_contiguous(),
              kOp, ": greedy must be a contiguous [B] = [", B, "] bool tensor, got ", greedy.scalar_type(),
              " of shape ", greedy.sizes());
  for (const NamedTensor& named : {NamedTensor{"seeds", &seeds}, NamedTensor{"offsets", &offsets}}) {
    const at::Tensor& t = *named.second;
    TORCH_CHECK(t.dim() == 1 && (t.size(0) == 1 || t.size(0) == B) && t.scalar_type() == at::kLong &&
                    t.is_contiguous(),
                kOp, ": ", named.first, " must be a contiguous int64 tensor of shape [1] or [B] = [", B, "], got ",
                t.scalar_type(), " of shape ", t.sizes());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_rejection_sample_cpu(
    const at::Tensor& draft_token_ids, const at::Tensor& parents, const std::optional<at::Tensor>& draft_probs,
    const at::Tensor& target_probs, const at::Tensor& greedy, const at::Tensor& seeds, const at::Tensor& offsets,
    bool without_replacement) {
  check_inputs(draft_token_ids, parents, draft_probs, target_probs, greedy, seeds, offsets);
  const int64_t B = draft_token_ids.size(0), T = draft_token_ids.size(1), V = target_probs.size(2);
  auto token_ids = at::empty({B, T + 1}, draft_token_ids.options());
  auto accepted_nodes = at::empty({B, T}, draft_token_ids.options());
  auto num_accepted = at::empty({B}, draft_token_ids.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, target_probs.scalar_type(), "tree_rejection_sample_cpu", [&] {
        TreeArgs<scalar_t> args{draft_token_ids.data_ptr<int64_t>(),
                                parents.data_ptr<int64_t>(),
                                draft_probs ? draft_probs->data_ptr<scalar_t>() : nullptr,
                                target_probs.data_ptr<scalar_t>(),
                                greedy.data_ptr<bool>(),
                                seeds.data_ptr<int64_t>(),
                                offsets.data_ptr<int64_t>(),
                                without_replacement,
                                seeds.size(0),
                                offsets.size(0),
                                T,
                                V,
                                draft_probs ? draft_probs->stride(0) : 0,
                                draft_probs ? draft_probs->stride(1) : 0,
                                target_probs.stride(0),
                                target_probs.stride(1),
                                token_ids.data_ptr<int64_t>(),
                                accepted_nodes.data_ptr<int64_t>(),
                                num_accepted.data_ptr<int64_t>()};
        at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
          std::vector<double> scratch;  // block sums, reused across this thread's rows
          for (int64_t b = begin; b < end; ++b) RowVerifier<scalar_t>(args, b, scratch).run();
        });
      });
  return {token_ids, accepted_nodes, num_accepted};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specdecode, m) {
  m.def(
      "tree_rejection_sample(Tensor draft_token_ids, Tensor parents, Tensor? draft_probs, Tensor target_probs, "
      "Tensor greedy, Tensor seeds, Tensor offsets, bool without_replacement) -> "
      "(Tensor token_ids, Tensor accepted_nodes, Tensor num_accepted)");
}

TORCH_LIBRARY_IMPL(specdecode, CPU, m) { m.impl("tree_rejection_sample", &tree_rejection_sample_cpu); }

}  // namespace specdecode
