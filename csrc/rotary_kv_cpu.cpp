#include "rotary_kv_cpu.h"

#include <cstring>

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

}  // namespace ponder
