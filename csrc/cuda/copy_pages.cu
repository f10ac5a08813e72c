#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.h"
#include "cuda/copy_pages.cuh"
#include "cuda/launchers.h"

namespace ponder {

namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("ponder: ") + what + " failed: " + cudaGetErrorString(err));
  }
}

template <typename VecT>
void launch(char* kv, const int32_t* src, const int32_t* dst, int64_t num_pairs, int64_t num_planes,
            int64_t plane_bytes, int64_t page_bytes, cudaStream_t stream) {
  // 128 threads move 2 KiB per pass with uint4; a 16-token page of 8 heads x 128 dims in bf16 is
  // 32 KiB, i.e. 16 passes, enough to hide latency without oversubscribing small pages.
  const dim3 grid(static_cast<unsigned>(num_pairs), static_cast<unsigned>(num_planes));
  CopyPagesKernel<VecT><<<grid, 128, 0, stream>>>(kv, src, dst, plane_bytes, page_bytes);
}

}  // namespace

void copy_pages_cuda(std::uintptr_t kv, std::uintptr_t src_pages, std::uintptr_t dst_pages,
                     int64_t num_pairs, int64_t num_planes, int64_t num_pages, int64_t page_bytes,
                     std::uintptr_t stream) {
  PONDER_CHECK_ARG(num_pairs >= 0, "copy_pages: num_pairs must be >= 0, got ", num_pairs);
  PONDER_CHECK_ARG(num_planes > 0 && num_planes <= 65535,
                   "copy_pages: num_planes (2 * layers) must be in [1, 65535], got ", num_planes);
  PONDER_CHECK_ARG(num_pages > 0, "copy_pages: num_pages must be > 0, got ", num_pages);
  PONDER_CHECK_ARG(page_bytes > 0, "copy_pages: page_bytes must be > 0, got ", page_bytes);
  PONDER_CHECK_ARG(num_pairs <= 0x7fffffff, "copy_pages: too many pairs: ", num_pairs);
  if (num_pairs == 0) return;
  PONDER_CHECK_ARG(kv != 0 && src_pages != 0 && dst_pages != 0, "copy_pages: null device pointer");

  char* base = reinterpret_cast<char*>(kv);
  auto* src = reinterpret_cast<const int32_t*>(src_pages);
  auto* dst = reinterpret_cast<const int32_t*>(dst_pages);
  const int64_t plane_bytes = num_pages * page_bytes;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  // The widest access every page start allows: the base and the page size must both be aligned.
  const auto align = [&](std::uintptr_t a) { return kv % a == 0 && page_bytes % int64_t(a) == 0; };
  if (align(16)) {
    launch<uint4>(base, src, dst, num_pairs, num_planes, plane_bytes, page_bytes, s);
  } else if (align(8)) {
    launch<uint2>(base, src, dst, num_pairs, num_planes, plane_bytes, page_bytes, s);
  } else if (align(4)) {
    launch<uint32_t>(base, src, dst, num_pairs, num_planes, plane_bytes, page_bytes, s);
  } else {
    launch<unsigned char>(base, src, dst, num_pairs, num_planes, plane_bytes, page_bytes, s);
  }
  check_cuda(cudaGetLastError(), "CopyPagesKernel launch");
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error so later calls start clean
    return 0;
  }
  return n;
}

}  // namespace ponder
