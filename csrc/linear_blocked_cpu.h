// A small dense fp32 linear layer on the host, summed the way a BLAS sgemm sums it: each output
// element is a chain of fused multiply-adds over k in ascending order, cut into blocks of
// `block` k's whose partial sums are added in order. Torch-free: tensors arrive as raw
// pointers and shapes; ponder.ops.linear checks them before calling.
//
// Why it exists: a decode step of a small model runs each matrix on a handful of rows, and the
// BLAS PyTorch uses gives a row the same bits in every batch only from 16 rows up, so ponder
// pads such products to 16 rows. ponder.ops.linear finds the block size and the bias order
// for which this kernel gives the BLAS's bits exactly (it probes once per input width), and
// then runs 1 to a few dozen rows here without padding: the same bits as before, less work.
//
// out[m, n] = combine(p_0, p_1, ...), where p_b = fma(x[m, k], w[n, k], ...) from 0.0f over
// k in [b * block, min(K, (b + 1) * block)), ascending, and combine adds the p_b left to
// right. bias_first: ((bias[n] + p_0) + p_1) + ...; otherwise ((p_0 + p_1) + ...) + bias[n].
// Every element is computed that way whatever the row count or the row's place in the batch.
#pragma once

#include <cstdint>

namespace ponder {

// Whether this build and CPU have a vector fused-multiply-add path (AVX2 + FMA or AVX-512 on
// x86-64). Without one the kernel still computes the same bits, one element at a time with
// std::fma, which is far slower than the BLAS: callers should not route work to it.
bool linear_blocked_cpu_fast();

// out[m, n] as above, for m < num_rows and n < out_features.
// x: num_rows rows of in_features floats, x_row_stride floats apart (>= in_features);
// wt: the weight transposed, element (k, n) at wt[(n / 16) * wt_strip_stride + k * wt_row_stride
// + n % 16], in one of two layouts: rows (wt_strip_stride 16: in_features rows of wt_row_stride
// floats, >= out_features rounded up to a multiple of 16) or strips (wt_row_stride 16: one block
// of in_features x 16 floats per 16 output columns, wt_strip_stride >= 16 * in_features apart).
// The columns past out_features are read and ignored, so they must be readable. Both layouts
// give the same bits; strips keep the 16 columns a tile reads in consecutive memory (rows of a
// wide matrix put them a row apart, which the cache and its prefetcher serve worse); bias: [out_features] or null; out: num_rows rows of out_features floats,
// out_row_stride apart (>= out_features), not overlapping the inputs.
// vector_path false: the scalar std::fma path whatever the CPU has (tests compare the two).
// Throws std::invalid_argument for negative sizes, block < 1, or strides below those bounds,
// before writing anything.
void linear_blocked_cpu(const float* x, int64_t num_rows, int64_t in_features, int64_t x_row_stride,
                        const float* wt, int64_t out_features, int64_t wt_row_stride, const float* bias,
                        bool bias_first, int64_t block, float* out, int64_t out_row_stride,
                        bool vector_path = true, int64_t wt_strip_stride = 16);

}  // namespace ponder
