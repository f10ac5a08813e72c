// ponder._core.PageTable: numpy in, numpy out. Array inputs must already be 1-D C-contiguous int32
// (ponder.page_table converts anything else); outputs are fresh arrays the caller owns. Scalar
// handles are checked here, so the Python facade passes them straight through on hot paths.
// Long calls release the GIL; a per-table mutex serialises calls from several Python threads.
#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "attention_plan.h"
#include "bindings.h"
#include "page_table.h"

namespace py = pybind11;

namespace ponder {

namespace {

struct BoundPageTable {
  BoundPageTable(int32_t num_pages, int32_t page_size, bool prefix_cache, int hash_bits)
      : table(num_pages, page_size, prefix_cache, hash_bits) {}
  PageTable table;
  // Locked while holding the GIL or not, but never held while waiting for the GIL: a call that
  // released the GIL unlocks before reacquiring it, so the two locks cannot deadlock.
  std::mutex mu;
};

// A borrowed view of a 1-D C-contiguous int32 numpy array.
struct Int32View {
  py::array array;
  const int32_t* data;
  int64_t size;
};

Int32View int32_view(const py::object& obj, const char* name) {
  if (!py::isinstance<py::array_t<int32_t>>(obj)) {
    throw py::type_error(detail::concat(name, " must be a numpy int32 array, got ",
                                        py::str(py::type::of(obj)).cast<std::string>(),
                                        py::isinstance<py::array>(obj)
                                            ? " of dtype " + py::str(obj.attr("dtype")).cast<std::string>()
                                            : std::string()));
  }
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (arr.ndim() != 1) throw py::type_error(detail::concat(name, " must be 1-D, got ", arr.ndim(), " dimensions"));
  if (!(arr.flags() & py::array::c_style)) throw py::type_error(detail::concat(name, " must be C-contiguous"));
  return {arr, static_cast<const int32_t*>(arr.data()), static_cast<int64_t>(arr.shape(0))};
}

// A Python int or numpy integer (never a bool or a float), as int64.
int64_t int_arg(py::handle h, const char* name) {
  if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr())) {
    throw py::type_error(detail::concat(name, " must be an int, got ", Py_TYPE(h.ptr())->tp_name));
  }
  const auto index = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
  if (!index) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0) {
    throw py::value_error(detail::concat(name, "=", py::str(index).cast<std::string>(), " is out of range"));
  }
  return v;
}

// Handles and page ids are int32; wider values cannot name anything, so they fail like unknown ones.
int32_t seq_arg(py::handle h) {
  const int64_t v = int_arg(h, "seq");
  if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
    throw py::value_error(detail::concat("seq=", v, " is out of range for a sequence handle (int32)"));
  }
  return static_cast<int32_t>(v);
}

int32_t page_arg(py::handle h, const PageTable& t) {
  const int64_t v = int_arg(h, "page");
  if (v < 0 || v >= t.num_pages()) {
    throw py::index_error(detail::concat("page=", v, " is out of range [0, ", t.num_pages(), ")"));
  }
  return static_cast<int32_t>(v);
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
  return out;
}

py::tuple allocate(BoundPageTable& self, const py::object& tokens) {
  const Int32View tok = int32_view(tokens, "tokens");
  std::vector<int64_t> slots;
  int64_t cached = 0;
  int32_t seq;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(self.mu);
    seq = self.table.allocate(tok.data, tok.size, &cached, slots);
  }
  return py::make_tuple(seq, cached, to_numpy(slots));
}

py::tuple append(BoundPageTable& self, const py::object& seqs, const py::object& counts, const py::object& tokens) {
  const Int32View s = int32_view(seqs, "seqs");
  const Int32View c = int32_view(counts, "counts");
  if (s.size != c.size) {
    throw py::value_error(detail::concat("seqs and counts must have the same length, got ", s.size, " and ", c.size));
  }
  Int32View tok{py::array(), nullptr, 0};
  if (!tokens.is_none()) tok = int32_view(tokens, "tokens");
  std::vector<int64_t> slots;
  std::vector<int32_t> src, dst;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(self.mu);
    self.table.append(s.data, c.data, s.size, tok.data, tok.size, slots, src, dst);
  }
  return py::make_tuple(to_numpy(slots), to_numpy(src), to_numpy(dst));
}

bool can_append(BoundPageTable& self, const py::object& seqs, const py::object& counts) {
  const Int32View s = int32_view(seqs, "seqs");
  const Int32View c = int32_view(counts, "counts");
  if (s.size != c.size) {
    throw py::value_error(detail::concat("seqs and counts must have the same length, got ", s.size, " and ", c.size));
  }
  std::lock_guard<std::mutex> lock(self.mu);
  return self.table.can_append(s.data, c.data, s.size);
}

py::tuple batch_tables(BoundPageTable& self, const py::object& seqs, int32_t pad, int64_t max_pages) {
  const Int32View s = int32_view(seqs, "seqs");
  std::vector<int32_t> tables, lengths;
  int64_t width;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(self.mu);
    width = self.table.batch_tables(s.data, s.size, pad, max_pages, tables, lengths);
  }
  py::array_t<int32_t> out({static_cast<py::ssize_t>(s.size), static_cast<py::ssize_t>(width)});
  if (!tables.empty()) std::memcpy(out.mutable_data(), tables.data(), tables.size() * sizeof(int32_t));
  return py::make_tuple(out, to_numpy(lengths));
}

// Everything a decode forward needs, in one call: append one token to each of seqs (with
// copy-on-write), then the step's positions, block tables and lengths, and the shared-prefix
// attention plan when sharing saves at least plan_min_saving token reads (< 0: never plan).
py::tuple decode_step(BoundPageTable& self, const py::object& seqs, const py::object& tokens,
                      int64_t plan_min_saving, int64_t max_pages_per_item, int64_t max_queries_per_item) {
  const Int32View s = int32_view(seqs, "seqs");
  const Int32View tok = int32_view(tokens, "tokens");
  if (s.size != tok.size) {
    throw py::value_error(detail::concat("tokens must hold one token per sequence (", s.size, "), got ", tok.size));
  }
  if (max_pages_per_item < 0 || max_queries_per_item < 0) {
    throw py::value_error(detail::concat("max_pages_per_item and max_queries_per_item must be >= 0, got ",
                                         max_pages_per_item, " and ", max_queries_per_item));
  }
  std::vector<int32_t> counts(static_cast<size_t>(s.size), 1);
  std::vector<int64_t> slots;
  std::vector<int32_t> src, dst, tables, lengths;
  int64_t width = 0;
  bool planned = false;
  AttentionPlan plan;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(self.mu);
    PageTable& t = self.table;
    t.append(s.data, counts.data(), s.size, tok.data, tok.size, slots, src, dst);  // all-or-nothing
    width = t.batch_tables(s.data, s.size, 0, -1, tables, lengths);
    if (plan_min_saving >= 0 && s.size > 1) {
      const int64_t S = t.page_size();
      int64_t reads = 0;
      std::vector<int32_t> used;
      for (int64_t b = 0; b < s.size; ++b) {
        reads += lengths[b];
        const int64_t n = (lengths[b] + S - 1) / S;
        used.insert(used.end(), tables.begin() + b * width, tables.begin() + b * width + n);
      }
      std::sort(used.begin(), used.end());
      const int64_t distinct = std::unique(used.begin(), used.end()) - used.begin();
      if (reads - distinct * S >= plan_min_saving) {
        plan = build_attention_plan(tables.data(), s.size, width, lengths.data(), S, t.num_pages(),
                                    max_pages_per_item, max_queries_per_item);
        planned = true;
      }
    }
  }
  py::array_t<int64_t> positions(static_cast<py::ssize_t>(s.size));
  int64_t* pos = positions.mutable_data();
  for (int64_t b = 0; b < s.size; ++b) pos[b] = static_cast<int64_t>(lengths[b]) - 1;
  py::array_t<int32_t> table_arr({static_cast<py::ssize_t>(s.size), static_cast<py::ssize_t>(width)});
  if (!tables.empty()) std::memcpy(table_arr.mutable_data(), tables.data(), tables.size() * sizeof(int32_t));
  return py::make_tuple(positions, to_numpy(slots), to_numpy(src), to_numpy(dst), table_arr, to_numpy(lengths),
                        planned ? py::object(attention_plan_dict(plan)) : py::object(py::none()));
}

py::dict stats(BoundPageTable& self) {
  PageTableStats st;
  {
    std::lock_guard<std::mutex> lock(self.mu);
    st = self.table.stats();
  }
  py::dict d;
  d["num_pages"] = st.num_pages;
  d["page_size"] = st.page_size;
  d["free"] = st.free;
  d["used"] = st.used;
  d["shared"] = st.shared;
  d["cached"] = st.cached;
  d["evictable"] = st.evictable;
  d["prefix_queries"] = st.prefix_queries;
  d["prefix_hits"] = st.prefix_hits;
  d["num_seqs"] = st.num_seqs;
  d["peak_used"] = st.peak_used;
  return d;
}

// Runs a short read or update under the table lock, keeping the GIL.
template <typename F>
auto locked(BoundPageTable& self, F&& f) {
  std::lock_guard<std::mutex> lock(self.mu);
  return f(self.table);
}

}  // namespace

void bind_page_table(py::module_& m) {
  py::class_<BoundPageTable>(m, "PageTable",
                             "Paged KV bookkeeping (page ids, refcounts, fork / copy-on-write, prefix cache). "
                             "Use ponder.page_table.PageTable, which validates and converts arguments.")
      .def(py::init<int32_t, int32_t, bool, int>(), py::arg("num_pages"), py::arg("page_size"),
           py::arg("prefix_cache") = true, py::arg("hash_bits") = 64)
      .def_property_readonly("num_pages", [](BoundPageTable& self) { return self.table.num_pages(); })
      .def_property_readonly("page_size", [](BoundPageTable& self) { return self.table.page_size(); })
      .def_property_readonly("prefix_cache", [](BoundPageTable& self) { return self.table.prefix_cache(); })
      .def("allocate", &allocate, py::arg("tokens"))
      .def("fork",
           [](BoundPageTable& self, py::handle seq) {
             const int32_t s = seq_arg(seq);
             return locked(self, [&](PageTable& t) { return t.fork(s); });
           },
           py::arg("seq"))
      .def("fork_many",
           [](BoundPageTable& self, const py::object& seqs) {
             const Int32View s = int32_view(seqs, "seqs");
             std::vector<int32_t> children;
             {
               py::gil_scoped_release nogil;
               std::lock_guard<std::mutex> lock(self.mu);
               self.table.fork_many(s.data, s.size, children);
             }
             return to_numpy(children);
           },
           py::arg("seqs"))
      .def("free_many",
           [](BoundPageTable& self, const py::object& seqs) {
             const Int32View s = int32_view(seqs, "seqs");
             py::gil_scoped_release nogil;
             std::lock_guard<std::mutex> lock(self.mu);
             self.table.free_many(s.data, s.size);
           },
           py::arg("seqs"))
      .def("append", &append, py::arg("seqs"), py::arg("counts"), py::arg("tokens") = py::none())
      .def("free",
           [](BoundPageTable& self, py::handle seq) {
             const int32_t s = seq_arg(seq);
             locked(self, [&](PageTable& t) { t.free(s); });
           },
           py::arg("seq"))
      .def("can_allocate",
           [](BoundPageTable& self, int64_t n) { return locked(self, [&](PageTable& t) { return t.can_allocate(n); }); },
           py::arg("n_tokens"))
      .def("can_allocate_tokens",
           [](BoundPageTable& self, const py::object& tokens) {
             const Int32View tok = int32_view(tokens, "tokens");
             return locked(self, [&](PageTable& t) { return t.can_allocate(tok.data, tok.size); });
           },
           py::arg("tokens"))
      .def("can_append", &can_append, py::arg("seqs"), py::arg("counts"))
      .def("batch_tables", &batch_tables, py::arg("seqs"), py::arg("pad") = -1, py::arg("max_pages") = -1)
      .def("decode_step", &decode_step, py::arg("seqs"), py::arg("tokens"), py::arg("plan_min_saving"),
           py::arg("max_pages_per_item") = 0, py::arg("max_queries_per_item") = 0)
      .def("num_tokens",
           [](BoundPageTable& self, py::handle seq) {
             const int32_t s = seq_arg(seq);
             return locked(self, [&](PageTable& t) { return t.num_tokens(s); });
           },
           py::arg("seq"))
      .def("pages",
           [](BoundPageTable& self, py::handle seq) {
             const int32_t s = seq_arg(seq);
             return locked(self, [&](PageTable& t) { return to_numpy(t.pages(s)); });
           },
           py::arg("seq"))
      .def("refcount",
           [](BoundPageTable& self, py::handle page) {
             return locked(self, [&](PageTable& t) { return t.refcount(page_arg(page, t)); });
           },
           py::arg("page"))
      .def("refcounts",
           [](BoundPageTable& self) { return locked(self, [&](PageTable& t) { return to_numpy(t.refcounts()); }); })
      .def("is_cached",
           [](BoundPageTable& self, py::handle page) {
             return locked(self, [&](PageTable& t) { return t.is_cached(page_arg(page, t)); });
           },
           py::arg("page"))
      .def("slot_of",
           [](BoundPageTable& self, py::handle seq, py::handle t) {
             const int32_t s = seq_arg(seq);
             const int64_t pos = int_arg(t, "t");
             return locked(self, [&](PageTable& pt) { return pt.slot_of(s, pos); });
           },
           py::arg("seq"), py::arg("t"))
      .def("free_pages",
           [](BoundPageTable& self) { return locked(self, [&](PageTable& t) { return to_numpy(t.free_pages()); }); })
      .def("evictable_pages",
           [](BoundPageTable& self) { return locked(self, [&](PageTable& t) { return to_numpy(t.evictable_pages()); }); })
      .def("live_seqs",
           [](BoundPageTable& self) { return locked(self, [&](PageTable& t) { return to_numpy(t.live_seqs()); }); })
      .def("stats", &stats);
}

}  // namespace ponder
