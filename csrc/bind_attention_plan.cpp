// ponder._core.attention_plan: numpy in, a dict of fresh numpy int32 arrays out. Inputs must
// already be C-contiguous int32 arrays (ponder.attention_plan converts anything else).
#include <cstring>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "attention_plan.h"
#include "bindings.h"
#include "common.h"

namespace py = pybind11;

namespace ponder {

namespace {

py::array int32_array(const py::object& obj, const char* name, py::ssize_t ndim) {
  if (!py::isinstance<py::array_t<int32_t>>(obj)) {
    throw py::type_error(detail::concat(name, " must be a numpy int32 array, got ",
                                        py::str(py::type::of(obj)).cast<std::string>(),
                                        py::isinstance<py::array>(obj)
                                            ? " of dtype " + py::str(obj.attr("dtype")).cast<std::string>()
                                            : std::string()));
  }
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (arr.ndim() != ndim) {
    throw py::value_error(detail::concat(name, " must have ", ndim, " dimensions, got ", arr.ndim()));
  }
  if (!(arr.flags() & py::array::c_style)) throw py::value_error(detail::concat(name, " must be C-contiguous"));
  return arr;
}

py::array_t<int32_t> to_numpy(const std::vector<int32_t>& v) {
  py::array_t<int32_t> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(int32_t));
  return out;
}

py::dict attention_plan(const py::object& block_tables, const py::object& seq_lens, int64_t page_size,
                        int64_t num_pages, int64_t max_pages_per_item, int64_t max_queries_per_item) {
  const py::array tables = int32_array(block_tables, "block_tables", 2);
  const py::array lens = int32_array(seq_lens, "seq_lens", 1);
  const int64_t batch = tables.shape(0), max_pages = tables.shape(1);
  if (lens.shape(0) != batch) {
    throw py::value_error(detail::concat("seq_lens has ", lens.shape(0), " entries but block_tables has ", batch,
                                         " rows; expected one length per row"));
  }
  AttentionPlan plan;
  {
    py::gil_scoped_release nogil;
    plan = build_attention_plan(static_cast<const int32_t*>(tables.data()), batch, max_pages,
                                static_cast<const int32_t*>(lens.data()), page_size, num_pages, max_pages_per_item,
                                max_queries_per_item);
  }
  return attention_plan_dict(plan);
}

}  // namespace

py::dict attention_plan_dict(const AttentionPlan& plan) {
  py::dict d;
  d["num_queries"] = plan.num_queries;
  d["num_segments"] = plan.num_segments;
  d["num_shared_items"] = plan.num_shared_items;
  d["max_item_queries"] = plan.max_item_queries;
  d["item_page_indptr"] = to_numpy(plan.item_page_indptr);
  d["item_pages"] = to_numpy(plan.item_pages);
  d["item_token_start"] = to_numpy(plan.item_token_start);
  d["item_num_tokens"] = to_numpy(plan.item_num_tokens);
  d["item_segment"] = to_numpy(plan.item_segment);
  d["item_query_indptr"] = to_numpy(plan.item_query_indptr);
  d["item_queries"] = to_numpy(plan.item_queries);
  d["merge_indptr"] = to_numpy(plan.merge_indptr);
  d["merge_slots"] = to_numpy(plan.merge_slots);
  return d;
}

void bind_attention_plan(py::module_& m) {
  m.def("attention_plan", &attention_plan, py::arg("block_tables"), py::arg("seq_lens"), py::arg("page_size"),
        py::arg("num_pages"), py::arg("max_pages_per_item"), py::arg("max_queries_per_item"),
        "Shared-prefix attention plan of a decode batch (see csrc/attention_plan.h): block_tables [B, max_pages] "
        "and seq_lens [B] C-contiguous int32 numpy arrays; returns a dict of int32 CSR arrays and counts. "
        "Releases the GIL while planning.");
}

}  // namespace ponder
