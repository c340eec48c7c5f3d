// CPU kernel of torch.ops.specdecode.compact_kv_: in-place, order-preserving compaction of the
// rows of one tensor along `batch_dim` (the KV-cache half of Speculative Rejection; the reference
// is specdecode/reference/compact_kv.py). Row kept_indices[i] moves to row i.
//
// Why there is no race, and no scratch:
//   kept_indices is strictly ascending, so kept[i] >= i: every destination row is at or before
//   its source. Processed sequentially in ascending i, step i reads row kept[i] >= i, which no
//   earlier step wrote (steps 0..i-1 wrote rows 0..i-1), and writes row i, whose old contents
//   were already read (by the step j <= i with kept[j] == i, if any). So one sequential pass is
//   a correct in-place compaction. The parallelism is across *columns*: each thread owns a
//   disjoint set of byte ranges of a row (the same ranges in every row) and runs the whole
//   ascending pass on them. Columns never interact, so threads never touch the same byte, and
//   each surviving row is read once and written once; rows with kept[i] == i are skipped.
//   Rows [N', B) are never written.
//
// Layouts: the row (all dims but batch_dim) must coalesce, in memory order, into at most two
// strided dims around one unit-stride run, and the whole tensor must not overlap itself (else a
// row move could clobber another row). Anything else is rejected: copying it would allocate.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "checks.h"

namespace specdecode {
namespace {

struct Dim {
  int64_t size, stride;  // stride in elements
};

// The tensor as [outer, mid] x inner with the batch dim apart; strides in elements.
struct RowLayout {
  int64_t outer = 1, outer_stride = 0, mid = 1, mid_stride = 0, inner = 1;
  int64_t batch_stride = 0;
};

// Sufficient test that no two elements share memory: sorted by stride, each dim steps past
// everything the smaller dims span.
bool is_non_overlapping(std::vector<Dim> dims) {
  std::sort(dims.begin(), dims.end(), [](const Dim& a, const Dim& b) { return a.stride < b.stride; });
  int64_t span = 0;  // max offset reachable with the dims so far
  for (const Dim& d : dims) {
    if (d.stride <= span) return false;
    span += (d.size - 1) * d.stride;
  }
  return true;
}

RowLayout row_layout(const at::Tensor& data, int64_t batch_dim) {
  std::vector<Dim> row_dims, all_dims;
  for (int64_t d = 0; d < data.dim(); ++d) {
    if (data.size(d) <= 1) continue;
    all_dims.push_back({data.size(d), data.stride(d)});
    if (d != batch_dim) row_dims.push_back({data.size(d), data.stride(d)});
  }
  TORCH_CHECK(is_non_overlapping(all_dims),
              "compact_kv_: data's elements overlap or interleave in memory (e.g. an expanded "
              "view); it cannot be compacted in place");
  // Memory order (largest stride first), then merge dims that continue each other.
  std::sort(row_dims.begin(), row_dims.end(), [](const Dim& a, const Dim& b) { return a.stride > b.stride; });
  std::vector<Dim> merged;
  for (const Dim& d : row_dims) {
    if (!merged.empty() && merged.back().stride == d.size * d.stride) {
      merged.back() = {merged.back().size * d.size, d.stride};
    } else {
      merged.push_back(d);
    }
  }
  RowLayout layout;
  layout.batch_stride = data.size(batch_dim) > 1 ? data.stride(batch_dim) : 0;
  if (!merged.empty() && merged.back().stride == 1) {
    layout.inner = merged.back().size;
    merged.pop_back();
  }
  TORCH_CHECK(merged.size() <= 2,
              "compact_kv_: a row of data is not [outer, mid, contiguous inner] in memory (", merged.size(),
              " strided dims after merging); compaction in place supports at most two");
  if (merged.size() >= 1) layout.outer = merged[0].size, layout.outer_stride = merged[0].stride;
  if (merged.size() == 2) layout.mid = merged[1].size, layout.mid_stride = merged[1].stride;
  return layout;
}

void check_kept_indices(const at::Tensor& kept, int64_t num_rows) {
  TORCH_CHECK(kept.dim() == 1 && kept.scalar_type() == at::kLong, "compact_kv_: kept_indices must be 1-D int64, got ",
              kept.scalar_type(), " of shape ", kept.sizes());
  TORCH_CHECK(kept.numel() <= num_rows, "compact_kv_: kept_indices has ", kept.numel(), " entries for only ", num_rows, " rows");
  const int64_t* idx = kept.data_ptr<int64_t>();
  for (int64_t i = 0; i < kept.numel(); ++i) {
    TORCH_CHECK(idx[i] >= 0 && idx[i] < num_rows, "compact_kv_: kept_indices[", i, "] = ", idx[i],
                " is outside [0, ", num_rows, ")");
    TORCH_CHECK(i == 0 || idx[i] > idx[i - 1], "compact_kv_: kept_indices must be strictly ascending (no "
                "duplicates); kept_indices[", i - 1, "] = ", idx[i - 1], ", kept_indices[", i, "] = ", idx[i]);
  }
}

// Calls visit(byte_offset_in_row, byte_count) for each contiguous run of the flat column range
// [begin, end) of a row, where columns are numbered (outer, mid, inner) row-major.
template <typename Visit>
void for_each_run(const RowLayout& L, int64_t element_size, int64_t begin, int64_t end, Visit&& visit) {
  int64_t column = begin;
  while (column < end) {
    const int64_t segment = column / L.inner, within = column % L.inner;
    const int64_t run = std::min(L.inner - within, end - column);
    const int64_t offset = (segment / L.mid) * L.outer_stride + (segment % L.mid) * L.mid_stride + within;
    visit(offset * element_size, run * element_size);
    column += run;
  }
}

// Whether the bytes a and b can reach intersect (a sufficient test for "no shared byte").
bool byte_spans_intersect(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0 || !a.storage().is_alias_of(b.storage())) return false;
  auto span = [](const at::Tensor& t) {
    int64_t last = 0;  // offset of the last element, in elements
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    const char* first = static_cast<const char*>(t.data_ptr());
    return std::make_pair(first, first + (last + 1) * t.element_size());
  };
  const auto [a_begin, a_end] = span(a);
  const auto [b_begin, b_end] = span(b);
  return a_begin < b_end && b_begin < a_end;
}

void check_arguments(const at::Tensor& data, const at::Tensor& kept_indices, int64_t batch_dim) {
  check_same_device("compact_kv_", {{"data", &data}, {"kept_indices", &kept_indices}});
  TORCH_CHECK(data.dim() >= 1, "compact_kv_: data must have at least one dimension");
  TORCH_CHECK(batch_dim >= -data.dim() && batch_dim < data.dim(), "compact_kv_: batch_dim = ", batch_dim,
              " is out of range for data of shape ", data.sizes());
  // As torch's own in-place ops: a leaf that requires grad must not be overwritten (under no_grad it may).
  TORCH_CHECK(!(at::GradMode::is_enabled() && data.requires_grad() && data.is_leaf()),
              "compact_kv_: data is a leaf Variable that requires grad and is being used in an in-place operation");
  // The kept indices are read while the rows move: if data's moves could rewrite them, a checked
  // index could turn into an out-of-bounds one.
  TORCH_CHECK(!byte_spans_intersect(data, kept_indices), "compact_kv_: kept_indices shares memory with data");
}

void compact_kv_cpu(const at::Tensor& data, const at::Tensor& kept_indices_in, int64_t batch_dim) {
  check_arguments(data, kept_indices_in, batch_dim);
  batch_dim = at::maybe_wrap_dim(batch_dim, data.dim());
  const auto kept_indices = kept_indices_in.contiguous();
  const int64_t num_rows = data.size(batch_dim), num_kept = kept_indices.numel();
  check_kept_indices(kept_indices, num_rows);
  if (num_kept == 0 || data.numel() == 0) return;
  const RowLayout L = row_layout(data, batch_dim);
  const int64_t element_size = data.element_size();
  const int64_t columns = L.outer * L.mid * L.inner;
  const int64_t* kept = kept_indices.data_ptr<int64_t>();
  char* base = static_cast<char*>(data.data_ptr());
  const int64_t row_bytes = L.batch_stride * element_size;
  // A thread gets at least 64 KiB of each row: below that, splitting a row costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / element_size);
  at::parallel_for(0, columns, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = 0; i < num_kept; ++i) {
      const int64_t source = kept[i];
      if (source == i) continue;  // already in place: not moved
      char* dst = base + i * row_bytes;
      const char* src = base + source * row_bytes;
      // Different rows of a non-overlapping tensor: the ranges are disjoint, memcpy is valid.
      for_each_run(L, element_size, begin, end,
                   [&](int64_t offset, int64_t bytes) { std::memcpy(dst + offset, src + offset, bytes); });
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specdecode, m) {
  m.def("compact_kv_(Tensor(a!) data, Tensor kept_indices, int batch_dim) -> ()");
}

TORCH_LIBRARY_IMPL(specdecode, CPU, m) { m.impl("compact_kv_", &compact_kv_cpu); }

}  // namespace specdecode
