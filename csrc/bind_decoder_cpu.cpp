// ponder._core.DecoderCpu (a whole host decode step, decoder_cpu.h) and the two PyTorch-order
// computations it uses (torch_order_cpu.h), on raw tensor pointers (integers from data_ptr()).
// ponder.models.native_decoder checks dtypes, devices, shapes and contiguity, and keeps the
// tensors behind the pointers alive.
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.h"
#include "decoder_cpu.h"
#include "torch_order_cpu.h"

namespace py = pybind11;

namespace ponder {

namespace {

// (weight, wt, wt_stride, wt_strip_stride, bias, block, bias_first, out_features, in_features,
//  qblocks, qtype, quant_max_rows); pointers 0 = none
using LinearTuple = std::tuple<uintptr_t, uintptr_t, int64_t, int64_t, uintptr_t, int64_t, bool, int64_t, int64_t,
                               uintptr_t, int, int64_t>;
// (item_page_indptr, item_pages, item_num_tokens, num_items, num_item_pages, item_query_indptr,
//  item_queries, num_slots)
using PlanTuple = std::tuple<uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, uintptr_t, uintptr_t, int64_t>;
// (attn_norm, qkv, o, mlp_norm, gate_up, down)
using LayerTuple = std::tuple<uintptr_t, LinearTuple, LinearTuple, uintptr_t, LinearTuple, LinearTuple>;

DecoderLinear to_linear(const LinearTuple& t) {
  DecoderLinear lin;
  lin.weight = as_ptr<const float>(std::get<0>(t));
  lin.wt = as_ptr<const float>(std::get<1>(t));
  lin.wt_stride = std::get<2>(t);
  lin.wt_strip_stride = std::get<3>(t);
  lin.bias = as_ptr<const float>(std::get<4>(t));
  lin.block = std::get<5>(t);
  lin.bias_first = std::get<6>(t);
  lin.out_features = std::get<7>(t);
  lin.in_features = std::get<8>(t);
  lin.qblocks = as_ptr<const uint8_t>(std::get<9>(t));
  lin.qtype = std::get<10>(t);
  lin.quant_max_rows = std::get<11>(t);
  return lin;
}

DecoderCpu make_decoder(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t intermediate,
                        float eps, int torch_width, const std::vector<LayerTuple>& layers, uintptr_t final_norm) {
  const DecoderCpuConfig config{hidden, heads, kv_heads, head_dim, intermediate, eps, torch_width};
  std::vector<DecoderLayerWeights> weights;
  weights.reserve(layers.size());
  for (const auto& t : layers) {
    DecoderLayerWeights w;
    w.attn_norm = as_ptr<const float>(std::get<0>(t));
    w.qkv = to_linear(std::get<1>(t));
    w.o = to_linear(std::get<2>(t));
    w.mlp_norm = as_ptr<const float>(std::get<3>(t));
    w.gate_up = to_linear(std::get<4>(t));
    w.down = to_linear(std::get<5>(t));
    weights.push_back(w);
  }
  return DecoderCpu(config, std::move(weights), as_ptr<const float>(final_norm));
}

}  // namespace

void bind_decoder_cpu(py::module_& m) {
  m.def(
      "rms_norm_torch_order",
      [](uintptr_t x, int64_t rows, int64_t C, int64_t x_stride, uintptr_t weight, float eps, int width, uintptr_t out,
         int64_t out_stride) {
        rms_norm_torch_order(as_ptr<const float>(x), rows, C, x_stride, as_ptr<const float>(weight), eps, width,
                             as_ptr<float>(out), out_stride);
      },
      py::arg("x"), py::arg("rows"), py::arg("C"), py::arg("x_stride"), py::arg("weight"), py::arg("eps"),
      py::arg("width"), py::arg("out"), py::arg("out_stride"),
      "out = x * rsqrt(mean(x * x, -1) + eps) * weight for fp32 rows, with PyTorch's summation order for "
      "`width`-float vectors (8: AVX2, 16: AVX-512); see csrc/torch_order_cpu.h. Pointers are integers.",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "silu_mul_torch_order",
      [](uintptr_t gate, uintptr_t up, int64_t rows, int64_t I, int64_t in_stride, int width, uintptr_t out,
         int64_t out_stride) {
        silu_mul_torch_order(as_ptr<const float>(gate), as_ptr<const float>(up), rows, I, in_stride, width,
                             as_ptr<float>(out), out_stride);
      },
      py::arg("gate"), py::arg("up"), py::arg("rows"), py::arg("I"), py::arg("in_stride"), py::arg("width"),
      py::arg("out"), py::arg("out_stride"),
      "out = F.silu(gate) * up for fp32 rows [rows, I] (gate and up rows in_stride floats apart), with "
      "PyTorch's vector exp on the first I - I % (2 * width) elements of a row and the C library's expf on "
      "the rest, as PyTorch's CPU kernel; see csrc/torch_order_cpu.h.",
      py::call_guard<py::gil_scoped_release>());
  py::class_<DecoderCpu>(m, "DecoderCpu",
                         "A whole fp32 decode step of a Llama-family decoder on the host (csrc/decoder_cpu.h). "
                         "Holds raw pointers: the caller keeps the weights alive and unchanged.")
      .def(py::init(&make_decoder), py::arg("hidden"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
           py::arg("intermediate"), py::arg("eps"), py::arg("torch_width"), py::arg("layers"),
           py::arg("final_norm"),
           "layers: per layer (attn_norm, qkv, o, mlp_norm, gate_up, down), each linear a tuple (weight, wt, "
           "wt_stride, wt_strip_stride, bias, block, bias_first, out_features, in_features, qblocks, qtype, "
           "quant_max_rows): block 0 runs linear_cpu on weight [N, K] (or, for at most quant_max_rows rows, "
           "linear_quant_cpu on the weight's GGUF blocks qblocks of ggml type qtype: the same bits), block > 0 "
           "linear_blocked_cpu on the transposed weight wt (its wt_row_stride and wt_strip_stride). Pointers are "
           "integers, 0 for none.")
      .def(
          "decode",
          [](const DecoderCpu& self, uintptr_t x, int64_t U, uintptr_t positions, uintptr_t cos_sin, int64_t max_pos,
             uintptr_t kv_cache, int64_t num_pages, int64_t page_size, uintptr_t slots, uintptr_t groups, int64_t T,
             uintptr_t block_tables, int64_t max_pages, uintptr_t seq_lens, const std::optional<PlanTuple>& plan,
             int num_threads) {
            DecoderPlan p;
            if (plan) {
              p.item_page_indptr = as_ptr<const int32_t>(std::get<0>(*plan));
              p.item_pages = as_ptr<const int32_t>(std::get<1>(*plan));
              p.item_num_tokens = as_ptr<const int32_t>(std::get<2>(*plan));
              p.num_items = std::get<3>(*plan);
              p.num_item_pages = std::get<4>(*plan);
              p.item_query_indptr = as_ptr<const int32_t>(std::get<5>(*plan));
              p.item_queries = as_ptr<const int32_t>(std::get<6>(*plan));
              p.num_slots = std::get<7>(*plan);
            }
            self.decode(as_ptr<float>(x), U, as_ptr<const int64_t>(positions), as_ptr<const float>(cos_sin), max_pos,
                        as_ptr<float>(kv_cache), num_pages, page_size, as_ptr<const int64_t>(slots),
                        as_ptr<const int64_t>(groups), T, as_ptr<const int32_t>(block_tables), max_pages,
                        as_ptr<const int32_t>(seq_lens), plan ? &p : nullptr, num_threads);
          },
          py::arg("x"), py::arg("U"), py::arg("positions"), py::arg("cos_sin"), py::arg("max_pos"),
          py::arg("kv_cache"), py::arg("num_pages"), py::arg("page_size"), py::arg("slots"), py::arg("groups"),
          py::arg("T"), py::arg("block_tables"), py::arg("max_pages"), py::arg("seq_lens"), py::arg("plan"),
          py::arg("num_threads"),
          "One decode step in place: x [U, C] token embeddings in, final-normed hidden rows out; K/V written "
          "at slots [T] (row t's from row groups[t], groups 0 when T == U); plan None (per-row paged "
          "attention) or (item_page_indptr, item_pages, item_num_tokens, num_items, num_item_pages, "
          "item_query_indptr, item_queries, num_slots) over the U rows; see csrc/decoder_cpu.h. Releases the GIL.",
          py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_layers", &DecoderCpu::num_layers);
}

}  // namespace ponder
