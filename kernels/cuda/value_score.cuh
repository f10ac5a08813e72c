// Device code for fused step scoring (ponder.ops.value_score): gather each scored step's last
// hidden state, RMSNorm it (optional), dot it with a head direction, sigmoid, and aggregate the
// score into the path score with the parent's. No torch, no pybind11: raw pointers only.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ponder {
namespace vs {

constexpr int kThreads = 256;

// Path aggregation modes, in the order of ponder.ops.value_score.MODES.
enum Mode : int { kLast = 0, kMin = 1, kProd = 2, kMean = 3 };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// Rounds an fp32 value to T and back: the reference's casts to the hidden dtype.
__device__ __forceinline__ float round_to(float x, float) { return x; }
__device__ __forceinline__ float round_to(float x, __nv_bfloat16) { return __bfloat162float(__float2bfloat16_rn(x)); }
__device__ __forceinline__ float round_to(float x, __half) { return __half2float(__float2half_rn(x)); }

// Sum over the block; every thread gets the total. `scratch` holds kThreads / 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  return total;
}

// Grid (M), kThreads threads. hidden: [N, C] T with row stride stride_hidden (elements);
// norm_weight (nullptr: no norm) and direction: [C] fp32; rows [M] int64; depth [M] int32.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ValueScoreKernel(const T* __restrict__ hidden, const int64_t* __restrict__ rows,
                     const float* __restrict__ norm_weight, const float* __restrict__ direction,
                     const float* __restrict__ parent_score, const int32_t* __restrict__ depth,
                     float* __restrict__ score_out, float* __restrict__ path_out, int64_t C, int64_t stride_hidden,
                     float eps, float bias, int mode) {
  __shared__ float scratch[kThreads / 32];
  const int64_t m = blockIdx.x;
  const T* h = hidden + rows[m] * stride_hidden;
  float rstd = 1.f;
  if (norm_weight != nullptr) {
    float sq = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      const float x = to_float(h[c]);
      sq = fmaf(x, x, sq);
    }
    rstd = 1.f / sqrtf(block_sum(sq, scratch) / float(C) + eps);
  }
  float acc = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    float x = to_float(h[c]);
    if (norm_weight != nullptr) {
      // LlamaRMSNorm: normalise in fp32, cast to the hidden dtype, scale, cast again.
      x = round_to(norm_weight[c] * round_to(x * rstd, T()), T());
    }
    acc = fmaf(x, direction[c], acc);
  }
  const float logit = block_sum(acc, scratch) + bias;
  if (threadIdx.x != 0) return;
  const float score = 1.f / (1.f + expf(-logit));
  const float parent = parent_score[m];
  const int d = depth[m];
  float path = score;
  if (d > 1) {
    if (mode == kMin) {
      path = fminf(parent, score);
    } else if (mode == kProd) {
      path = parent * score;
    } else if (mode == kMean) {
      path = (parent * float(d - 1) + score) / float(d);
    }
  }
  score_out[m] = score;
  path_out[m] = path;
}

}  // namespace vs
}  // namespace ponder
