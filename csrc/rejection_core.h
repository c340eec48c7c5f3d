// The inner algorithm of the chain verifiers, one source of truth for the padded op
// (csrc/rejection_sample.cpp) and the ragged op (csrc/rejection_sample_ragged.cpp): verify one
// request's drafts in order, stop at the first rejection, then emit one token (residual, target
// row, bonus row or a given bonus id). The rules are docs/ops.md (rejection_sample and
// rejection_sample_ragged); the ops differ only in where a request's rows live and how a row's
// probabilities are read (probabilities as given, or softmax of logits), which the `Request`
// type below provides.
#pragma once
#include <cstdint>

#include "philox.h"

namespace specdecode {
namespace chain {

constexpr int64_t kPlaceholderTokenId = -1;  // output padding after the emitted token

struct Outcome {
  int64_t num_accepted;
  int64_t emitted;
};

inline bool in_vocab(int64_t id, int64_t vocab_size) { return id >= 0 && id < vocab_size; }

// The uniform of `slot` on one request's Philox stream (docs/ops.md, "The random stream").
struct Stream {
  uint64_t seed;
  uint64_t offset;
  uint32_t stream_row;  // the row index with one seed for the batch, 0 with per-request seeds

  float uniform(int64_t slot) const {
    return uniform_from_word(philox_first_word(seed, static_cast<uint32_t>(slot), stream_row,
                                               static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)));
  }
};

// `Request` provides:
//   int64_t draft(int64_t i) const;             draft id at position i < K (any value)
//   int64_t target_argmax(int64_t i);          first argmax of target row i <= K, NaN ignored
//   bool accepts(int64_t i, int64_t x, float u);   u * p_i(x) < q_i(x) (float32, strict)
//   int64_t sample(int64_t j, bool residual, float u);  inverse CDF of max(0, q_j - p_j)
//                                              (residual) or max(0, q_j); -1 for no positive mass
//   bool has_bonus_id() const; int64_t bonus_id() const;  a bonus token given by the caller
// The uniforms: slot i < K decides position i, slot K draws the emitted token.
template <typename Request>
Outcome verify_chain(Request& request, const Stream& stream, int64_t num_drafts, int64_t vocab_size, bool greedy) {
  int64_t accepted = 0;
  for (; accepted < num_drafts; ++accepted) {
    const int64_t draft = request.draft(accepted);
    if (!in_vocab(draft, vocab_size)) break;  // placeholder: rejected, and nothing after it
    const bool accept = greedy ? draft == request.target_argmax(accepted)
                               : request.accepts(accepted, draft, stream.uniform(accepted));
    if (!accept) break;
  }
  if (accepted == num_drafts && request.has_bonus_id()) return {accepted, request.bonus_id()};
  if (greedy) return {accepted, request.target_argmax(accepted)};
  const bool has_draft = accepted < num_drafts && in_vocab(request.draft(accepted), vocab_size);
  const float u = stream.uniform(num_drafts);
  int64_t emitted = request.sample(accepted, has_draft, u);
  if (emitted < 0 && has_draft) emitted = request.sample(accepted, false, u);  // zero residual mass
  if (emitted < 0) emitted = 0;  // no positive mass anywhere (NaN/zero row): stay in [0, V)
  return {accepted, emitted};
}

// One output row: the accepted drafts, the emitted token, then kPlaceholderTokenId up to `width`.
template <typename out_t, typename Request>
void write_tokens(out_t* out, const Request& request, const Outcome& outcome, int64_t width) {
  for (int64_t i = 0; i < width; ++i) {
    const int64_t token = i < outcome.num_accepted ? request.draft(i)
                          : i == outcome.num_accepted ? outcome.emitted
                                                      : kPlaceholderTokenId;
    out[i] = static_cast<out_t>(token);
  }
}

}  // namespace chain
}  // namespace specdecode
