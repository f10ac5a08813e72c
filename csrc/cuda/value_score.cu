#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.h"
#include "cuda/launchers.h"
#include "cuda/value_score.cuh"

namespace ponder {

namespace {

template <typename T>
void launch_value_score(std::uintptr_t hidden, const int64_t* rows, int64_t M, const float* norm_weight,
                        const float* direction, const float* parent, const int32_t* depth, float* score, float* path,
                        int64_t C, int64_t stride, float eps, float bias, int mode, cudaStream_t stream) {
  vs::ValueScoreKernel<T><<<static_cast<unsigned>(M), vs::kThreads, 0, stream>>>(
      reinterpret_cast<const T*>(hidden), rows, norm_weight, direction, parent, depth, score, path, C, stride, eps, bias,
      mode);
}

}  // namespace

void value_score_cuda(std::uintptr_t hidden, int64_t dtype, std::uintptr_t rows, int64_t num_rows,
                      std::uintptr_t norm_weight, std::uintptr_t direction, std::uintptr_t parent_score,
                      std::uintptr_t depth, std::uintptr_t score, std::uintptr_t path_score, int64_t hidden_size,
                      int64_t stride_hidden, double eps, double bias, int64_t mode, std::uintptr_t stream) {
  PONDER_CHECK_ARG(dtype >= 0 && dtype <= 2, "value_score (cuda): dtype must be 0 (float32), 1 (bfloat16) or 2 (float16), got ",
                   dtype);
  PONDER_CHECK_ARG(mode >= 0 && mode <= 3, "value_score (cuda): mode must be 0 (last), 1 (min), 2 (prod) or 3 (mean), got ",
                   mode);
  PONDER_CHECK_ARG(num_rows >= 0 && num_rows <= 0x7fffffff, "value_score (cuda): num_rows must be in [0, 2^31), got ",
                   num_rows);
  PONDER_CHECK_ARG(hidden_size >= 1, "value_score (cuda): hidden_size must be >= 1, got ", hidden_size);
  PONDER_CHECK_ARG(stride_hidden >= hidden_size, "value_score (cuda): stride_hidden (", stride_hidden,
                   ") must be >= hidden_size (", hidden_size, ")");
  if (num_rows == 0) return;
  PONDER_CHECK_ARG(hidden && rows && direction && parent_score && depth && score && path_score,
                   "value_score (cuda): null device pointer");
  const auto* r = reinterpret_cast<const int64_t*>(rows);
  const auto* w = reinterpret_cast<const float*>(norm_weight);
  const auto* d = reinterpret_cast<const float*>(direction);
  const auto* p = reinterpret_cast<const float*>(parent_score);
  const auto* dep = reinterpret_cast<const int32_t*>(depth);
  auto* s = reinterpret_cast<float*>(score);
  auto* ps = reinterpret_cast<float*>(path_score);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const float e = float(eps), b = float(bias);
  if (dtype == 0) {
    launch_value_score<float>(hidden, r, num_rows, w, d, p, dep, s, ps, hidden_size, stride_hidden, e, b, int(mode), st);
  } else if (dtype == 1) {
    launch_value_score<__nv_bfloat16>(hidden, r, num_rows, w, d, p, dep, s, ps, hidden_size, stride_hidden, e, b,
                                      int(mode), st);
  } else {
    launch_value_score<__half>(hidden, r, num_rows, w, d, p, dep, s, ps, hidden_size, stride_hidden, e, b, int(mode), st);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("ponder: ValueScoreKernel launch failed: ") + cudaGetErrorString(err));
  }
}

}  // namespace ponder
