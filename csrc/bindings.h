// One bind_* function per native component; module.cpp calls them all.
#pragma once

#include <cstdint>

#include <pybind11/pybind11.h>

#include "attention_plan.h"

namespace ponder {
// A tensor's data pointer, passed from Python as an integer (data_ptr()).
template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// The plan as the dict ponder.attention_plan reads (counts and fresh int32 numpy arrays).
pybind11::dict attention_plan_dict(const AttentionPlan& plan);

void bind_cuda(pybind11::module_& m);
void bind_forest(pybind11::module_& m);
void bind_page_table(pybind11::module_& m);
void bind_attention_plan(pybind11::module_& m);
void bind_attention_cpu(pybind11::module_& m);
void bind_sample(pybind11::module_& m);
void bind_token_trie(pybind11::module_& m);
void bind_linear_cpu(pybind11::module_& m);
void bind_linear_blocked_cpu(pybind11::module_& m);
void bind_decoder_cpu(pybind11::module_& m);
}  // namespace ponder
