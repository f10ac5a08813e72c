// Two of PyTorch's fp32 CPU computations redone bit for bit, so that a native decoder layer
// (decoder_cpu.h) gives the same bits as the model's eager forward, which runs them through
// PyTorch:
//
// - rms_norm_torch_order: ponder.ops.norm's host rms_norm, x * rsqrt(mean(x * x) + eps) * w.
//   The mean is PyTorch's sum over the last axis divided by C. PyTorch sums a contiguous row of
//   n floats as `width`-lane vectors (width = its Vectorized<float>::size(): 8 with AVX2, 16
//   with AVX-512): the n / width vectors v[i] go to 4 interleaved accumulators
//   (v[4j + r] -> acc r) through a 4-level cascade (a level-0 sum of 16 consecutive j's is
//   added to level 1, and so on), the vectors past the last multiple of 4 to accumulator 0,
//   then acc0 += acc1, += acc2, += acc3; the row's last n % width floats are summed one by one
//   from 0, then the vector's lanes are added to that in lane order.
// - silu_mul_torch_order: F.silu(gate) * up, silu = g / (1 + exp(-g)). PyTorch's vector loop
//   takes each row 2 * width elements at a time with its vector exp (a Cody-Waite reduction by
//   ln 2 and a degree-6 polynomial in fused multiply-adds, scaled by 2^q in two halves; 0 below
//   -104, inf above 104); the last row_length % (2 * width) elements of a row take the scalar
//   loop, whose exp is the C library's expf.
//
// Both are matched against PyTorch on random data at run time (ponder.models.native_decoder)
// before a model uses them; a PyTorch whose order differs keeps the eager forward.
#pragma once

#include <cstdint>

namespace ponder {

// out[r, :] = x[r, :] * (1 / sqrt(sum(x[r, :]^2) / C + eps)) * weight, rows x_stride / out_stride
// floats apart; width: 8 or 16.
void rms_norm_torch_order(const float* x, int64_t rows, int64_t C, int64_t x_stride, const float* weight,
                          float eps, int width, float* out, int64_t out_stride);

// out[r, j] = silu(gate[r, j]) * up[r, j] for j < I; gate and up rows in_stride floats apart,
// out rows out_stride apart; width: 8 or 16.
void silu_mul_torch_order(const float* gate, const float* up, int64_t rows, int64_t I, int64_t in_stride,
                          int width, float* out, int64_t out_stride);

// The sum of x[0..n) * x[0..n) in PyTorch's order (exposed for the native tests).
float sum_squares_torch_order(const float* x, int64_t n, int width);

// PyTorch's vector exp (see above), one element (exposed for the native tests).
float exp_torch_vector(float d);

}  // namespace ponder
