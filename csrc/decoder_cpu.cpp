// One decode step of a Llama-family decoder on the host; see decoder_cpu.h.
#include "decoder_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "attention_cpu.h"
#include "common.h"
#include "cpu_threads.h"
#include "linear_blocked_cpu.h"
#include "linear_cpu.h"
#include "linear_quant_cpu.h"
#include "rotary_kv_cpu.h"
#include "shared_prefix_cpu.h"
#include "torch_order_cpu.h"

namespace ponder {

namespace {

void check_linear(const DecoderLinear& lin, int64_t layer, const char* name, int64_t n, int64_t k) {
  const std::string where = "layer " + std::to_string(layer) + " " + name;
  PONDER_CHECK_ARG(lin.out_features == n && lin.in_features == k, where, " must be [", n, ", ", k, "], got [",
                   lin.out_features, ", ", lin.in_features, "]");
  if (lin.block > 0) {
    PONDER_CHECK_ARG(lin.wt != nullptr, where, ": the blocked kernel needs the transposed weight");
  } else {
    PONDER_CHECK_ARG(lin.block == 0 && lin.weight != nullptr, where, ": needs the weight [", n, ", ", k,
                     "] (block 0) or the transposed weight (block > 0), got block ", lin.block);
  }
  if (lin.qblocks != nullptr) {
    PONDER_CHECK_ARG(lin.block == 0, where, ": GGUF blocks go with block 0 (linear_cpu), got block ", lin.block);
    quant_block_bytes(lin.qtype);  // a known type
    PONDER_CHECK_ARG(k % 32 == 0, where, ": GGUF blocks need in_features a multiple of 32, got ", k);
    PONDER_CHECK_ARG(linear_quant_cpu_available(), where, ": this CPU has no linear_quant_cpu for its blocks");
  }
}

constexpr int64_t kPartsPerThread = 4;  // runs of rows per thread (cpu_threads.h)
constexpr int64_t kMinParallelMacs = int64_t(1) << 20;  // smaller products stay on one thread

// out [rows, N] (rows out_stride apart) = x [rows, K] (rows x_stride apart) · Wᵀ + bias
void apply(const DecoderLinear& lin, const float* x, int64_t rows, int64_t x_stride, float* out, int64_t out_stride,
           int num_threads) {
  if (rows == 0) return;
  if (lin.block > 0) {
    // linear_blocked_cpu computes a row the same way whatever rows come with it, so large
    // products split their rows over the threads (linear_cpu splits its own)
    auto run = [&](int64_t r0, int64_t r1) {
      linear_blocked_cpu(x + r0 * x_stride, r1 - r0, lin.in_features, x_stride, lin.wt, lin.out_features,
                         lin.wt_stride, lin.bias, lin.bias_first, lin.block, out + r0 * out_stride, out_stride,
                         true, lin.wt_strip_stride);
    };
    split_rows(rows, rows * lin.out_features * lin.in_features, num_threads, kMinParallelMacs, kPartsPerThread, run);
  } else if (lin.qblocks != nullptr && rows <= lin.quant_max_rows) {
    linear_quant_cpu(x, rows, lin.in_features, rows > 1 ? x_stride : lin.in_features, lin.qblocks, lin.qtype,
                     lin.out_features, lin.bias, out, out_stride, num_threads);
  } else {
    linear_cpu(x, rows, lin.in_features, rows > 1 ? x_stride : lin.in_features, lin.weight, lin.out_features,
               lin.bias, out, out_stride, num_threads);
  }
}

}  // namespace

DecoderCpu::DecoderCpu(const DecoderCpuConfig& config, std::vector<DecoderLayerWeights> layers,
                       const float* final_norm)
    : config_(config), layers_(std::move(layers)), final_norm_(final_norm) {
  const auto& c = config_;
  PONDER_CHECK_ARG(c.hidden > 0 && c.heads > 0 && c.kv_heads > 0 && c.head_dim > 0 && c.intermediate > 0,
                   "DecoderCpu: hidden, heads, kv_heads, head_dim and intermediate must be positive");
  PONDER_CHECK_ARG(c.heads % c.kv_heads == 0, "DecoderCpu: heads (", c.heads, ") must be a multiple of kv_heads (",
                   c.kv_heads, ")");
  PONDER_CHECK_ARG(c.head_dim % 2 == 0, "DecoderCpu: head_dim must be even, got ", c.head_dim);
  PONDER_CHECK_ARG(c.torch_width == 8 || c.torch_width == 16, "DecoderCpu: torch_width must be 8 or 16, got ",
                   c.torch_width);
  PONDER_CHECK_ARG(final_norm_ != nullptr, "DecoderCpu: final_norm is required");
  const int64_t C = c.hidden, D = c.head_dim, I = c.intermediate;
  for (int64_t i = 0; i < num_layers(); ++i) {
    const auto& w = layers_[i];
    PONDER_CHECK_ARG(w.attn_norm != nullptr && w.mlp_norm != nullptr, "DecoderCpu: layer ", i,
                     " needs both norm weights");
    check_linear(w.qkv, i, "qkv", (c.heads + 2 * c.kv_heads) * D, C);
    check_linear(w.o, i, "o_proj", C, c.heads * D);
    check_linear(w.gate_up, i, "gate_up", 2 * I, C);
    check_linear(w.down, i, "down", C, I);
    PONDER_CHECK_ARG(w.gate_up.bias == nullptr && w.down.bias == nullptr, "DecoderCpu: layer ", i,
                     ": the MLP has no biases");
  }
}

void DecoderCpu::decode(float* x, int64_t U, const int64_t* positions, const float* cos_sin, int64_t max_pos,
                        float* kv_cache, int64_t num_pages, int64_t page_size, const int64_t* slots,
                        const int64_t* groups, int64_t T, const int32_t* block_tables, int64_t max_pages,
                        const int32_t* seq_lens, const DecoderPlan* plan, int num_threads) const {
  const auto& c = config_;
  const int64_t C = c.hidden, H = c.heads, Hk = c.kv_heads, D = c.head_dim, I = c.intermediate;
  PONDER_CHECK_ARG(U >= 0 && T >= U && page_size > 0 && num_pages > 0 && max_pages >= 0 && max_pos > 0,
                   "decode: need 0 <= U <= T and positive page_size, num_pages and max_pos; got U=", U, " T=", T);
  PONDER_CHECK_ARG(groups != nullptr || T == U, "decode: groups are required when T (", T, ") != U (", U, ")");
  // every index first: nothing is written unless all of them are good
  for (int64_t t = 0; t < T; ++t) {
    PONDER_CHECK_RANGE(slots[t] >= -1 && slots[t] < num_pages * page_size, "slot_mapping[", t, "] = ", slots[t],
                       " must be -1 (skip) or lie in [0, ", num_pages * page_size, ")");
    if (groups != nullptr) {
      PONDER_CHECK_RANGE(groups[t] >= 0 && groups[t] < U, "groups[", t, "] = ", groups[t], " must lie in [0, ", U,
                         ")");
    }
  }
  for (int64_t u = 0; u < U; ++u) {
    PONDER_CHECK_RANGE(positions[u] >= 0 && positions[u] < max_pos, "positions[", u, "] = ", positions[u],
                       " must lie in [0, ", max_pos, ")");
    const int64_t len = seq_lens[u];
    PONDER_CHECK_ARG(len >= 1 && len <= max_pages * page_size, "seq_lens[", u, "] = ", len, " must lie in [1, ",
                     max_pages * page_size, "]");
    for (int64_t p = 0; p < (len + page_size - 1) / page_size; ++p) {
      const int32_t page = block_tables[u * max_pages + p];
      PONDER_CHECK_RANGE(page >= 0 && page < num_pages, "block_tables[", u, ", ", p, "] = ", page,
                         " must lie in [0, ", num_pages, ")");
    }
  }
  if (plan != nullptr) {
    check_shared_prefix_plan(U, page_size, num_pages, plan->item_page_indptr, plan->item_pages,
                             plan->item_num_tokens, plan->num_items, plan->num_item_pages, plan->item_query_indptr,
                             plan->item_queries, plan->num_slots);
  }
  if (U == 0) return;

  const int64_t qkv_width = (H + 2 * Hk) * D;
  std::vector<float> h(U * C), qkv(U * qkv_width), q(U * H * D), k(U * Hk * D), attn(U * H * D), tmp(U * C),
      gate_up(U * 2 * I), act(U * I);
  std::vector<float> k_rows, v_rows;  // [T, Hk D] each: row t's K / V when rows share groups
  if (groups != nullptr) {
    k_rows.resize(T * Hk * D);
    v_rows.resize(T * Hk * D);
  }
  std::vector<int32_t> indptr(U + 1);
  for (int64_t u = 0; u <= U; ++u) indptr[u] = static_cast<int32_t>(u);
  const int64_t plane = num_pages * page_size * Hk * D;  // floats of one K or V plane
  // as the eager forward: 1 / sqrt(D) in double, rounded to float once
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const int width = c.torch_width;

  auto residual_add = [&](const float* y) {
    for (int64_t e = 0; e < U * C; ++e) x[e] = x[e] + y[e];
  };
  for (int64_t i = 0; i < num_layers(); ++i) {
    const auto& w = layers_[i];
    rms_norm_torch_order(x, U, C, C, w.attn_norm, c.eps, width, h.data(), C);
    apply(w.qkv, h.data(), U, C, qkv.data(), qkv_width, num_threads);
    rotary_cpu(qkv.data(), qkv_width, qkv.data() + H * D, qkv_width, U, H, Hk, D, positions, cos_sin, max_pos,
               q.data(), k.data());
    const float* v = qkv.data() + (H + Hk) * D;
    float* k_plane = kv_cache + (2 * i) * plane;
    float* v_plane = k_plane + plane;
    if (groups == nullptr) {
      append_kv_cpu(k_plane, v_plane, num_pages * page_size, Hk * D, k.data(), Hk * D, v, qkv_width, slots, T);
    } else {
      const size_t bytes = static_cast<size_t>(Hk * D) * sizeof(float);
      for (int64_t t = 0; t < T; ++t) {
        std::memcpy(k_rows.data() + t * Hk * D, k.data() + groups[t] * Hk * D, bytes);
        std::memcpy(v_rows.data() + t * Hk * D, v + groups[t] * qkv_width, bytes);
      }
      append_kv_cpu(k_plane, v_plane, num_pages * page_size, Hk * D, k_rows.data(), Hk * D, v_rows.data(), Hk * D,
                    slots, T);
    }
    if (plan == nullptr) {
      paged_attention_cpu(q.data(), U, H, D, k_plane, v_plane, KVType::kFloat32, Hk, page_size, block_tables, U,
                          max_pages, seq_lens, indptr.data(), num_pages, scale, attn.data(), num_threads);
    } else {
      shared_prefix_attention_cpu(q.data(), U, H, D, k_plane, v_plane, KVType::kFloat32, Hk, page_size, num_pages,
                                  plan->item_page_indptr, plan->item_pages, plan->item_num_tokens, plan->num_items,
                                  plan->num_item_pages, plan->item_query_indptr, plan->item_queries,
                                  plan->num_slots, scale, attn.data(), num_threads);
    }
    apply(w.o, attn.data(), U, H * D, tmp.data(), C, num_threads);
    residual_add(tmp.data());
    rms_norm_torch_order(x, U, C, C, w.mlp_norm, c.eps, width, h.data(), C);
    apply(w.gate_up, h.data(), U, C, gate_up.data(), 2 * I, num_threads);
    silu_mul_torch_order(gate_up.data(), gate_up.data() + I, U, I, 2 * I, width, act.data(), I);
    apply(w.down, act.data(), U, I, tmp.data(), C, num_threads);
    residual_add(tmp.data());
  }
  rms_norm_torch_order(x, U, C, C, final_norm_, c.eps, width, tmp.data(), C);
  std::memcpy(x, tmp.data(), static_cast<size_t>(U * C) * sizeof(float));
}

}  // namespace ponder
