// CUDA launchers, exposed only when the extension was built with PONDER_WITH_CUDA. The module
// always carries CUDA_BUILT so Python can tell without trying a launch.
#include "bindings.h"

#ifdef PONDER_WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace py = pybind11;

namespace ponder {

void bind_cuda(py::module_& m) {
#ifdef PONDER_WITH_CUDA
  m.attr("CUDA_BUILT") = true;
  m.def("cuda_device_count", &cuda_device_count,
        "Visible CUDA devices as seen by the statically linked CUDA runtime (0 without a driver).");
  m.def("copy_pages", &copy_pages_cuda, py::arg("kv"), py::arg("src_pages"), py::arg("dst_pages"),
        py::arg("num_pairs"), py::arg("num_planes"), py::arg("num_pages"), py::arg("page_bytes"),
        py::arg("stream"),
        "Launch CopyPagesKernel: copy page src_pages[i] -> dst_pages[i] in every plane of a KV "
        "cache viewed as [num_planes, num_pages, page_bytes] bytes. Pointers and the stream are "
        "integers; releases the GIL while launching.",
        py::call_guard<py::gil_scoped_release>());
  m.def("shared_prefix_attention_cuda", &shared_prefix_attention_cuda, py::arg("q"), py::arg("kv"), py::arg("dtype"),
        py::arg("k_base"), py::arg("v_plane"), py::arg("item_page_indptr"), py::arg("item_pages"),
        py::arg("item_num_tokens"), py::arg("item_query_indptr"), py::arg("item_queries"), py::arg("first_item"),
        py::arg("last_item"), py::arg("part_out"), py::arg("part_lse"), py::arg("num_heads"), py::arg("num_kv_heads"),
        py::arg("head_dim"), py::arg("page_size"), py::arg("scale"), py::arg("stream"),
        "Launch SharedPrefixAttentionKernel over plan items [first_item, last_item): partial outputs and "
        "base-2 log-sum-exps per slot. Pointers and the stream are integers; releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
  m.def("merge_partials_cuda", &merge_partials_cuda, py::arg("part_out"), py::arg("part_lse"), py::arg("merge_indptr"),
        py::arg("merge_slots"), py::arg("out"), py::arg("num_queries"), py::arg("num_heads"), py::arg("head_dim"),
        py::arg("stream"), "Launch MergePartialsKernel: log-sum-exp merge of each query's partials into out (fp32).",
        py::call_guard<py::gil_scoped_release>());
  m.def("value_score_cuda", &value_score_cuda, py::arg("hidden"), py::arg("dtype"), py::arg("rows"),
        py::arg("num_rows"), py::arg("norm_weight"), py::arg("direction"), py::arg("parent_score"), py::arg("depth"),
        py::arg("score"), py::arg("path_score"), py::arg("hidden_size"), py::arg("stride_hidden"), py::arg("eps"),
        py::arg("bias"), py::arg("mode"), py::arg("stream"),
        "Launch ValueScoreKernel: one block per scored row (norm, dot, sigmoid, path aggregation).",
        py::call_guard<py::gil_scoped_release>());
#else
  m.attr("CUDA_BUILT") = false;
#endif
}

}  // namespace ponder
