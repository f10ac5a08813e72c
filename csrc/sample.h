// Token sampling on the host: the counter-based Gumbel-max draw of ponder.ops.sample for fp32
// logits in CPU memory. Torch-free: rows arrive as raw pointers and shapes.
//
// The draw is defined by ponder.ops.reference.sample, whose float32 logarithms are PyTorch's
// own vectorised functions. This code takes the same decisions (greedy argmax, top-k set,
// Gumbel argmax) with its own arithmetic; top-k and greedy are comparisons of the given floats
// and so exact, and the Gumbel argmax is taken only when the winner leads by more than both
// computations' rounding error (sample.cpp). Closer calls mark the row deferred instead of
// guessed, and the caller runs the reference on it: tokens are the reference's, bit for bit.
// Nucleus (top-p) sets depend on the reference's float32 softmax sums, whose rounding is that
// of PyTorch's SIMD lanes, so the caller computes them and passes them in as masks.
#pragma once

#include <cstdint>

namespace ponder {

// MurmurHash3's 32-bit finaliser (a bijection on uint32 with full avalanche).
uint32_t fmix32(uint32_t h);

// Hash of one row key (seed, node_id, child_index, position): h = 0x9E3779B9, then
// h = fmix32(h ^ word) over the low and high 32-bit words of each of the four int64s.
uint32_t sampling_row_hash(const int64_t* key);

// The uniform in (0, 1) that a row (by its hash) assigns vocabulary index v: an odd multiple
// of 2**-24, exact in float.
float sampling_uniform(uint32_t row_hash, int64_t v);

// Draw one token per row.
//   logits       [num_logit_rows, row_stride] float32, the first vocab entries of each row are
//                used; row b reads logits row logit_rows[b], or row b when logit_rows is null
//                (then num_logit_rows is ignored and logits holds batch rows). Rows that share
//                their logits (identical decode rows) pass them once.
//   keys         [batch, 4] int64; temperature [batch] float32 >= 0 (0 = greedy)
//   top_k        [batch] int32 in [0, vocab] (0 and vocab = off); top_p [batch] float32 in (0, 1]
//   allowed      [num_masks, vocab] uint8 (1 = may be drawn; top-k and top-p applied), or null
//   allowed_row  [batch] int64: the row of `allowed` for this row, or -1 (then top_k applies and
//                top_p must be 1 unless the row is greedy); mask rows are used in order
// Outputs, [batch] each: tokens int64; deferred uint8 (1 = decision too close to call, or a
// NaN / +inf / all -inf row: the caller must draw this row with the reference; its token is
// unset). num_threads > 1 shares blocks of rows out to the calling thread and up to
// num_threads - 1 helpers when the batch is large enough to pay for them (cpu_threads.h; a row's
// draw never depends on the thread that makes it). Throws std::invalid_argument for bad shapes,
// parameter values, a logit_rows entry outside [0, num_logit_rows) or num_threads < 1, before
// writing anything.
void sample_cpu(const float* logits, int64_t batch, int64_t vocab, int64_t row_stride, const int64_t* keys,
                const float* temperature, const int32_t* top_k, const float* top_p, const uint8_t* allowed,
                const int64_t* allowed_row, int64_t* tokens, uint8_t* deferred, int num_threads = 1,
                const int64_t* logit_rows = nullptr, int64_t num_logit_rows = 0);

}  // namespace ponder
