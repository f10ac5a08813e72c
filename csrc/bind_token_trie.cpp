// ponder._core.TokenTrie: numpy int arrays in (ponder.token_trie converts and checks them),
// logits as a raw fp32 pointer (an integer from data_ptr()) with its row layout.
#include <cstdint>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "common.h"
#include "token_trie.h"

namespace py = pybind11;

namespace ponder {

namespace {

template <typename T>
py::array_t<T> vector_arg(const py::object& obj, const char* name) {
  if (!py::isinstance<py::array_t<T>>(obj)) {
    throw py::type_error(detail::concat(name, " must be a numpy array of ", sizeof(T) * 8, "-bit ints, got ",
                                        py::str(py::type::of(obj)).cast<std::string>()));
  }
  auto arr = py::reinterpret_borrow<py::array_t<T>>(obj);
  if (arr.ndim() != 1) throw py::value_error(detail::concat(name, " must be 1-D, got ", arr.ndim(), " dims"));
  if (!(arr.flags() & py::array::c_style)) throw py::value_error(detail::concat(name, " must be C-contiguous"));
  return arr;
}

}  // namespace

void bind_token_trie(py::module_& m) {
  py::class_<TokenTrie>(m, "TokenTrie", "Allowed steps of many nodes as one trie of token ids (csrc/token_trie.h).")
      .def(py::init<>())
      .def("add_root", &TokenTrie::add_root)
      .def_property_readonly("num_nodes", &TokenTrie::num_nodes)
      .def(
          "insert",
          [](TokenTrie& t, const py::object& roots, const py::object& indptr, const py::object& tokens, int64_t vocab) {
            auto r = vector_arg<int32_t>(roots, "roots");
            auto ip = vector_arg<int64_t>(indptr, "steps_indptr");
            auto tk = vector_arg<int32_t>(tokens, "tokens");
            const int64_t n = r.shape(0);
            if (ip.shape(0) != n + 1) {
              throw py::value_error(detail::concat("steps_indptr must have len(roots) + 1 = ", n + 1, " entries, got ",
                                                   ip.shape(0)));
            }
            if (n > 0 && ip.at(n) != tk.shape(0)) {
              throw py::value_error(detail::concat("steps_indptr[-1] = ", ip.at(n), " must equal len(tokens) = ",
                                                   tk.shape(0)));
            }
            for (int64_t i = 0; i < n; ++i) {
              if (ip.at(i + 1) < ip.at(i) || ip.at(i + 1) > tk.shape(0)) {
                throw py::value_error("steps_indptr must be non-decreasing and within tokens");
              }
            }
            t.insert(r.data(), ip.data(), tk.data(), n, vocab);
          },
          py::arg("roots"), py::arg("steps_indptr"), py::arg("tokens"), py::arg("vocab"))
      .def(
          "mask",
          [](const TokenTrie& t, const py::object& states, uintptr_t logits, int64_t vocab, int64_t row_stride) {
            auto s = vector_arg<int32_t>(states, "states");
            t.mask(s.data(), s.shape(0), reinterpret_cast<float*>(logits), vocab, row_stride);
          },
          py::arg("states"), py::arg("logits"), py::arg("vocab"), py::arg("row_stride"))
      .def(
          "advance",
          [](const TokenTrie& t, const py::object& states, const py::object& tokens) {
            auto s = vector_arg<int32_t>(states, "states");
            auto tk = vector_arg<int64_t>(tokens, "tokens");
            if (tk.shape(0) != s.shape(0)) {
              throw py::value_error(detail::concat("tokens must have one entry per state (", s.shape(0), "), got ",
                                                   tk.shape(0)));
            }
            py::array_t<int32_t> next(s.shape(0));
            py::array_t<uint8_t> leaf(s.shape(0));
            t.advance(s.data(), tk.data(), s.shape(0), next.mutable_data(), leaf.mutable_data());
            return py::make_tuple(next, leaf.attr("astype")("bool"));
          },
          py::arg("states"), py::arg("tokens"))
      .def("child_tokens", &TokenTrie::child_tokens, py::arg("node"));
}

}  // namespace ponder
