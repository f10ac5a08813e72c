// A whole Llama-family decode step on the host in one call: for U rows (one new token per
// sequence), every layer's rms_norm -> qkv -> rotary -> append_kv -> paged attention -> o_proj
// -> residual -> rms_norm -> SwiGLU -> residual, then the final norm, with no Python between the
// ops. Each op is the host kernel the eager forward (ponder.models.llama) runs, or redoes
// PyTorch's arithmetic in PyTorch's order (torch_order_cpu.h), so the hidden rows and the K/V
// written are the same bits as the eager forward's:
// - linear layers: linear_cpu (weights the eager forward sends to it) or linear_blocked_cpu in
//   the BLAS's summation order (the small ones; ponder.ops.linear.blas_block_rule), per matrix;
// - rotary_cpu, append_kv_cpu, paged_attention_cpu (or shared_prefix_attention_cpu through a
//   plan) as they are;
// - residual adds: one rounding each, as PyTorch's add.
#pragma once

#include <cstdint>
#include <vector>

namespace ponder {

// One fp32 matrix [N, K] of the decoder. block > 0: linear_blocked_cpu on wt (the transposed
// weight, with its row and strip strides) with `block` and `bias_first`; block == 0: linear_cpu
// on weight [N, K], or linear_quant_cpu on its blocks.
struct DecoderLinear {
  const float* weight = nullptr;
  // block == 0 only: the weight's GGUF blocks (linear_quant_cpu.h; the same bits as linear_cpu on
  // weight), read instead of weight by products of at most quant_max_rows rows; null for none
  const uint8_t* qblocks = nullptr;
  int qtype = 0;
  int64_t quant_max_rows = 0;
  const float* wt = nullptr;
  int64_t wt_stride = 0;
  int64_t wt_strip_stride = 16;
  const float* bias = nullptr;
  int64_t block = 0;
  bool bias_first = false;
  int64_t out_features = 0;
  int64_t in_features = 0;
};

struct DecoderLayerWeights {
  const float* attn_norm = nullptr;  // [C]
  DecoderLinear qkv;                 // [(H + 2 Hk) D, C]
  DecoderLinear o;                   // [C, H D]
  const float* mlp_norm = nullptr;   // [C]
  DecoderLinear gate_up;             // [2 I, C]
  DecoderLinear down;                // [C, I]
};

// A decode step's shared-prefix attention plan (ponder.attention_plan, cut to the U rows):
// every layer then attends through shared_prefix_attention_cpu, each item's pages read once for
// all of its rows.
struct DecoderPlan {
  const int32_t* item_page_indptr = nullptr;
  const int32_t* item_pages = nullptr;
  const int32_t* item_num_tokens = nullptr;
  int64_t num_items = 0;
  int64_t num_item_pages = 0;
  const int32_t* item_query_indptr = nullptr;
  const int32_t* item_queries = nullptr;
  int64_t num_slots = 0;
};

struct DecoderCpuConfig {
  int64_t hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  float eps = 0.0f;
  int torch_width = 8;  // PyTorch's fp32 vector size (torch_order_cpu.h)
};

class DecoderCpu {
 public:
  // Checks the shapes of every layer against config (std::invalid_argument naming the layer).
  DecoderCpu(const DecoderCpuConfig& config, std::vector<DecoderLayerWeights> layers, const float* final_norm);

  // x [U, C]: the rows' token embeddings in, their final-normed hidden states out.
  // positions [U] int64 (checked against max_pos); cos_sin [max_pos, D].
  // kv_cache [L, 2, num_pages, page_size, Hk, D] fp32, contiguous.
  // slots [T] int64: K/V slot of row t (page * page_size + offset, -1 skips); groups [T] int64
  // (or null when T == U): row t writes the K/V computed for row groups[t] (< U).
  // block_tables [U, max_pages] int32, seq_lens [U] int32: each row's pages and length (its own
  // token included). plan: null for per-row paged attention, else the step's plan over the U
  // rows. Every index is checked before anything is written.
  void decode(float* x, int64_t U, const int64_t* positions, const float* cos_sin, int64_t max_pos,
              float* kv_cache, int64_t num_pages, int64_t page_size, const int64_t* slots,
              const int64_t* groups, int64_t T, const int32_t* block_tables, int64_t max_pages,
              const int32_t* seq_lens, const DecoderPlan* plan, int num_threads) const;

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  DecoderCpuConfig config_;
  std::vector<DecoderLayerWeights> layers_;
  const float* final_norm_;
};

}  // namespace ponder
