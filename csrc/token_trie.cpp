#include "token_trie.h"

#include <algorithm>
#include <limits>

#include "common.h"

namespace ponder {

int32_t TokenTrie::add_root() {
  if (children_.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    throw_invalid("TokenTrie is full: 2**31 - 1 nodes");
  }
  children_.emplace_back();
  return static_cast<int32_t>(children_.size() - 1);
}

void TokenTrie::check_state(int32_t state, const char* what) const {
  if (state < kNoState || state >= static_cast<int64_t>(children_.size())) {
    throw_out_of_range(what, " ", state, " is not a trie node (the trie has ", children_.size(), " nodes; ",
                       kNoState, " = unconstrained)");
  }
}

int32_t TokenTrie::find_child(int32_t node, int32_t token) const {
  const auto& kids = children_[node];
  auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(token, std::numeric_limits<int32_t>::min()));
  return (it != kids.end() && it->first == token) ? it->second : kNoState;
}

void TokenTrie::insert(const int32_t* roots, const int64_t* steps_indptr, const int32_t* tokens, int64_t num_steps,
                       int64_t vocab) {
  if (num_steps < 0) throw_invalid("num_steps must be >= 0, got ", num_steps);
  if (vocab < 1) throw_invalid("vocab must be >= 1, got ", vocab);
  if (num_steps > 0 && steps_indptr[0] != 0) throw_invalid("steps_indptr[0] must be 0, got ", steps_indptr[0]);
  for (int64_t i = 0; i < num_steps; ++i) {
    check_state(roots[i], "roots[i]");
    if (roots[i] == kNoState) throw_invalid("roots[", i, "] is -1: every step needs a root");
    if (steps_indptr[i + 1] <= steps_indptr[i]) {
      throw_invalid("step ", i, " is empty (steps_indptr must increase strictly)");
    }
    for (int64_t j = steps_indptr[i]; j < steps_indptr[i + 1]; ++j) {
      if (tokens[j] < 0 || tokens[j] >= vocab) {
        throw_out_of_range("step ", i, " has token id ", tokens[j], " outside [0, ", vocab, ")");
      }
    }
  }
  for (int64_t i = 0; i < num_steps; ++i) {
    int32_t node = roots[i];
    for (int64_t j = steps_indptr[i]; j < steps_indptr[i + 1]; ++j) {
      int32_t child = find_child(node, tokens[j]);
      if (child == kNoState) {
        child = add_root();
        auto& kids = children_[node];
        auto pos = std::lower_bound(kids.begin(), kids.end(),
                                    std::make_pair(tokens[j], std::numeric_limits<int32_t>::min()));
        kids.insert(pos, {tokens[j], child});
      }
      node = child;
    }
  }
}

void TokenTrie::mask(const int32_t* states, int64_t batch, float* logits, int64_t vocab, int64_t row_stride) const {
  if (batch < 0 || vocab < 1 || row_stride < vocab) {
    throw_invalid("mask needs batch >= 0, vocab >= 1 and row_stride >= vocab, got ", batch, ", ", vocab, ", ",
                  row_stride);
  }
  for (int64_t b = 0; b < batch; ++b) check_state(states[b], "states[b]");
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> kept;
  for (int64_t b = 0; b < batch; ++b) {
    if (states[b] == kNoState) continue;
    const auto& kids = children_[states[b]];
    float* row = logits + b * row_stride;
    kept.clear();
    for (const auto& kid : kids) kept.push_back(kid.first < vocab ? row[kid.first] : neg_inf);
    std::fill(row, row + vocab, neg_inf);
    for (size_t k = 0; k < kids.size(); ++k) {
      if (kids[k].first < vocab) row[kids[k].first] = kept[k];
    }
  }
}

void TokenTrie::advance(const int32_t* states, const int64_t* tokens, int64_t batch, int32_t* next,
                        uint8_t* at_leaf) const {
  if (batch < 0) throw_invalid("batch must be >= 0, got ", batch);
  for (int64_t b = 0; b < batch; ++b) {
    check_state(states[b], "states[b]");
    if (states[b] != kNoState && find_child(states[b], static_cast<int32_t>(tokens[b])) == kNoState) {
      throw_invalid("row ", b, ": token ", tokens[b], " is not an allowed continuation of trie node ", states[b]);
    }
  }
  for (int64_t b = 0; b < batch; ++b) {
    if (states[b] == kNoState) {
      next[b] = kNoState;
      at_leaf[b] = 0;
      continue;
    }
    next[b] = find_child(states[b], static_cast<int32_t>(tokens[b]));
    at_leaf[b] = children_[next[b]].empty() ? 1 : 0;
  }
}

std::vector<int32_t> TokenTrie::child_tokens(int32_t node) const {
  check_state(node, "node");
  std::vector<int32_t> out;
  if (node == kNoState) return out;
  for (const auto& kid : children_[node]) out.push_back(kid.first);
  return out;
}

}  // namespace ponder
