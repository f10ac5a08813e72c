#include "rotary_kv_cpu.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu_clones.h"

// Built with -ffp-contract=off (CMakeLists.txt): a fused multiply-add would round once where
// the reference rounds twice.

namespace ponder {

namespace {

PONDER_CPU_CLONES
void rotate_rows(const float* x, int64_t row_stride, int64_t rows, int64_t heads, int64_t D,
                 const int64_t* positions, const float* cos_sin, float* out) {
  const int64_t half = D / 2;
  for (int64_t t = 0; t < rows; ++t) {
    const float* c = cos_sin + positions[t] * D;
    const float* s = c + half;
    for (int64_t h = 0; h < heads; ++h) {
      const float* x1 = x + t * row_stride + h * D;
      const float* x2 = x1 + half;
      float* o1 = out + (t * heads + h) * D;
      float* o2 = o1 + half;
      for (int64_t i = 0; i < half; ++i) {
        const float a = x1[i] * c[i];
        const float b = x2[i] * s[i];
        o1[i] = a - b;
        const float e = x2[i] * c[i];
        const float f = x1[i] * s[i];
        o2[i] = e + f;
      }
    }
  }
}

}  // namespace

void rotary_cpu(const float* q, int64_t q_row_stride, const float* k, int64_t k_row_stride, int64_t num_rows,
                int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, const int64_t* positions,
                const float* cos_sin, int64_t max_pos, float* q_out, float* k_out) {
  PONDER_CHECK_ARG(head_dim > 0 && head_dim % 2 == 0, "rotary: head_dim must be positive and even, got ", head_dim);
  for (int64_t t = 0; t < num_rows; ++t) {
    PONDER_CHECK_RANGE(positions[t] >= 0 && positions[t] < max_pos, "positions[", t, "] = ", positions[t],
                       " must lie in [0, ", max_pos, ")");
  }
  rotate_rows(q, q_row_stride, num_rows, num_heads, head_dim, positions, cos_sin, q_out);
  rotate_rows(k, k_row_stride, num_rows, num_kv_heads, head_dim, positions, cos_sin, k_out);
}

void append_kv_cpu(float* k_plane, float* v_plane, int64_t num_slots, int64_t row_size, const float* k,
                   int64_t k_row_stride, const float* v, int64_t v_row_stride, const int64_t* slots,
                   int64_t num_rows) {
  for (int64_t t = 0; t < num_rows; ++t) {
    PONDER_CHECK_RANGE(slots[t] >= -1 && slots[t] < num_slots, "slot_mapping[", t, "] = ", slots[t],
                       " must be -1 (skip) or lie in [0, ", num_slots, ")");
  }
  const size_t bytes = static_cast<size_t>(row_size) * sizeof(float);
  for (int64_t t = 0; t < num_rows; ++t) {
    if (slots[t] < 0) continue;
    std::memcpy(k_plane + slots[t] * row_size, k + t * k_row_stride, bytes);
    std::memcpy(v_plane + slots[t] * row_size, v + t * v_row_stride, bytes);
  }
}

void copy_pages_cpu(void* kv, int64_t num_planes, int64_t num_pages, int64_t page_bytes, const int32_t* src_pages,
                    const int32_t* dst_pages, int64_t num_pairs) {
  PONDER_CHECK_ARG(num_pairs >= 0, "copy_pages: num_pairs must be >= 0, got ", num_pairs);
  PONDER_CHECK_ARG(num_planes > 0 && num_pages > 0 && page_bytes > 0,
                   "copy_pages: num_planes, num_pages and page_bytes must be > 0, got ", num_planes, ", ", num_pages,
                   ", ", page_bytes);
  if (num_pairs == 0) return;
  PONDER_CHECK_ARG(kv != nullptr && src_pages != nullptr && dst_pages != nullptr, "copy_pages: null pointer");
  for (int64_t i = 0; i < num_pairs; ++i) {
    PONDER_CHECK_RANGE(src_pages[i] >= 0 && src_pages[i] < num_pages, "src_pages[", i, "] = ", src_pages[i],
                       " must lie in [0, ", num_pages, ")");
    PONDER_CHECK_RANGE(dst_pages[i] >= 0 && dst_pages[i] < num_pages, "dst_pages[", i, "] = ", dst_pages[i],
                       " must lie in [0, ", num_pages, ")");
  }
  std::vector<int32_t> dst(dst_pages, dst_pages + num_pairs);
  std::sort(dst.begin(), dst.end());
  for (int64_t i = 1; i < num_pairs; ++i) {
    PONDER_CHECK_ARG(dst[i] != dst[i - 1], "dst_pages must be distinct: page ", dst[i], " appears twice");
  }
  for (int64_t i = 0; i < num_pairs; ++i) {
    PONDER_CHECK_ARG(!std::binary_search(dst.begin(), dst.end(), src_pages[i]), "src_pages[", i, "] = ",
                     src_pages[i], " is also a destination; copy-on-write targets must be fresh pages");
  }
  const size_t bytes = static_cast<size_t>(page_bytes);
  char* base = static_cast<char*>(kv);
  for (int64_t plane = 0; plane < num_planes; ++plane) {
    char* pages = base + static_cast<size_t>(plane) * static_cast<size_t>(num_pages) * bytes;
    for (int64_t i = 0; i < num_pairs; ++i) {
      std::memcpy(pages + static_cast<size_t>(dst_pages[i]) * bytes,
                  pages + static_cast<size_t>(src_pages[i]) * bytes, bytes);
    }
  }
}

}  // namespace ponder
