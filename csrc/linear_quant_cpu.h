// A linear layer whose weights stay in GGUF's quantised blocks: out = x · Wᵀ (+ bias) for fp32
// rows x and W given as blocks of 32 weights (Q4_0, Q4_1 or Q8_0), de-quantised in registers as
// they are used. Torch-free: pointers and sizes; ponder.ops.linear checks the tensors.
//
// Why: one decode row through a model is bound by reading its weights. SmolLM2-135M's fp32
// weights are 540 MB per token; its Q4_1 / Q8_0 blocks are 97 MB.
//
// The same bits as linear_cpu on the de-quantised weights. Every weight a block gives is exact
// in fp32 whichever way it is formed: Q8_0's d * q (an fp16 scale times an 8-bit integer: at
// most 19 significant bits), Q4_0's d * (q - 8) and Q4_1's d * q (at most 15 bits) are exact
// products, so Q4_1's d * q + m rounds once, fused or not, as ponder.models' de-quantiser rounds
// it. Each output then goes through linear_cpu's summation (16 lanes, lane l summing
// x[k] * w[k] over k = l mod 16 in ascending k with fused multiply-adds, the fixed pairwise tree,
// bias last). So a row gets the bits linear_cpu gives on an FMA CPU (its AVX2 and AVX-512 paths)
// at any row and thread count; where the CPU lacks AVX2 + FMA + F16C the kernel is absent
// (linear_quant_cpu_available() is false) and the caller keeps the fp32 weights.
#pragma once

#include <cstdint>

#include "linear_cpu.h"

namespace ponder {

// ggml's type ids for the block formats this kernel reads (32 weights per block).
enum class QuantType : int { kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8 };

// Bytes of one 32-weight block of `type` (18, 20, 34); throws std::invalid_argument for a type
// outside QuantType.
int64_t quant_block_bytes(int type);

// Whether this build and CPU can run linear_quant_cpu (x86-64 with AVX2, FMA and F16C).
bool linear_quant_cpu_available();

// out[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]) with W's row n stored as in_features / 32
// consecutive blocks of `type` (GGUF's layout of an [N, K] weight: blocks row after row).
// x: num_rows rows of in_features floats, x_row_stride apart (>= in_features); bias: [N] or
// null; out: rows of out_features floats, out_row_stride apart (>= out_features), not
// overlapping the inputs. num_threads > 1 splits the output columns over the calling thread and
// helpers when the product is large enough (the results do not change). Throws
// std::invalid_argument, before writing anything, for negative sizes, in_features not a multiple
// of 32, small strides, num_threads < 1, an unknown type, or a CPU without the kernel. isa:
// kAuto the best path the CPU has (AVX-512 where linear_cpu takes its AVX-512 path, else AVX2),
// kAvx512 / kAvx2 that path (same bits; throws when the CPU lacks it); there is no kGeneric path.
void linear_quant_cpu(const float* x, int64_t num_rows, int64_t in_features, int64_t x_row_stride,
                      const uint8_t* blocks, int type, int64_t out_features, const float* bias, float* out,
                      int64_t out_row_stride, int num_threads, LinearIsa isa = LinearIsa::kAuto);

}  // namespace ponder
