// One bind_* function per native component; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

#include "attention_plan.h"

namespace ponder {
// The plan as the dict ponder.attention_plan reads (counts and fresh int32 numpy arrays).
pybind11::dict attention_plan_dict(const AttentionPlan& plan);

void bind_cuda(pybind11::module_& m);
void bind_forest(pybind11::module_& m);
void bind_page_table(pybind11::module_& m);
void bind_attention_plan(pybind11::module_& m);
void bind_attention_cpu(pybind11::module_& m);
void bind_sample(pybind11::module_& m);
void bind_token_trie(pybind11::module_& m);
}  // namespace ponder
