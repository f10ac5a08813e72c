// A dense fp32 linear layer on the host: out = x · Wᵀ (+ bias), the product every decoder layer
// runs four times. Torch-free: tensors arrive as raw pointers and shapes; ponder.ops.linear
// checks dtypes, devices, shapes and contiguity before calling.
//
// Why it exists: a decode step of a few rows through a model of a few hundred MB is bound by
// reading the weights, and the BLAS PyTorch uses reads them at about half the memory bandwidth
// for 1-8 rows once its results are made independent of the row count. This kernel reads each
// weight row once per block of rows, at any row count.
//
// Every output element is computed the same way whatever the row count, the row's place in the
// batch or the thread count: out[m, n] = bias[n] + reduce(acc), where acc holds 16 partial sums
// (lane l sums x[m, k] * w[n, k] over k = l mod 16, k ascending) and reduce adds them in one
// fixed pairwise tree. So a row's result never depends on which other rows share its batch.
#pragma once

#include <cstdint>

namespace ponder {

// Which compiled path runs: the best the CPU has (kAuto), or one named path (tests compare them).
enum class LinearIsa : int { kAuto = 0, kAvx512 = 1, kAvx2 = 2, kGeneric = 3 };

// Whether this build and CPU can run `isa` (kAuto and kGeneric: always).
bool linear_cpu_has(LinearIsa isa);

// out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n] when bias is not null).
// x: M rows of K floats, x_row_stride floats apart (>= K); w: [N, K] dense; bias: [N] or null;
// out: M rows of N floats, out_row_stride floats apart (>= N), not overlapping x, w or bias.
// num_threads > 1 shares chunks of the output columns out to the calling thread and up to
// num_threads - 1 helpers when the product is large enough to pay for them (cpu_threads.h; the
// results do not change). Throws std::invalid_argument for negative
// sizes, strides below the row length, num_threads < 1 or an `isa` the CPU lacks, before writing
// anything.
void linear_cpu(const float* x, int64_t num_rows, int64_t in_features, int64_t x_row_stride, const float* w,
                int64_t out_features, const float* bias, float* out, int64_t out_row_stride, int num_threads,
                LinearIsa isa = LinearIsa::kAuto);

namespace detail {
// The argument checks linear_cpu and linear_quant_cpu share: sizes >= 0, row strides at least the
// row lengths, num_threads >= 1; throws std::invalid_argument("<kernel>: ...") naming the argument.
void check_linear_args(const char* kernel, int64_t num_rows, int64_t in_features, int64_t x_row_stride,
                       int64_t out_features, int64_t out_row_stride, int num_threads);

// For tests: the baseline path (no instruction-set attribute, one thread, no checks) with each
// 16-lane accumulator held as `parts` native vectors (1, 2 or 4, as the AVX-512 / AVX2 / baseline
// paths hold it) and that path's tile shape. Every `parts` must give the same bits; throws
// std::invalid_argument for another value.
void linear_cpu_baseline_parts(int parts, const float* x, int64_t num_rows, int64_t in_features,
                               int64_t x_row_stride, const float* w, int64_t out_features, const float* bias,
                               float* out, int64_t out_row_stride);
}  // namespace detail

}  // namespace ponder
