// TokenTrie: the allowed steps of many nodes as one trie of token ids, so that constrained
// decoding masks logits and advances branches natively, with no Python call per token.
//
// Each constrained parent gets a root; each allowed step (a token sequence) is a path from it.
// A decoding branch is a state = the trie node of the tokens it has written so far. Example
// with steps {[5, 7], [5, 9], [6]} under root 0:
//
//   0 --5--> 1 --7--> 2 (end)       mask(state 0) keeps tokens {5, 6}; advance(0, 5) = 1;
//          \--9--> 3 (end)          mask(state 1) keeps {7, 9}; advance(1, 9) = 3, a leaf:
//   0 --6--> 4 (end)                the branch has written a whole step and must stop.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace ponder {

class TokenTrie {
 public:
  static constexpr int32_t kNoState = -1;  // an unconstrained branch

  // A new root (an empty step prefix); returns its node id.
  int32_t add_root();
  // Insert steps[steps_indptr[i]:steps_indptr[i+1]] under roots[i] for every i (each step
  // non-empty, token ids in [0, vocab)). All-or-nothing: invalid input throws first.
  void insert(const int32_t* roots, const int64_t* steps_indptr, const int32_t* tokens, int64_t num_steps,
              int64_t vocab);
  // For each row b with states[b] >= 0: every logit of logits[b * row_stride + v], v < vocab,
  // whose token is not a child of states[b] becomes -inf. Rows with kNoState are untouched.
  void mask(const int32_t* states, int64_t batch, float* logits, int64_t vocab, int64_t row_stride) const;
  // next[b] = the child of states[b] along tokens[b] (kNoState stays kNoState); at_leaf[b] = 1
  // when that child has no children (a whole step was written). A token that is not a child
  // throws std::invalid_argument (the branch left its allowed steps).
  void advance(const int32_t* states, const int64_t* tokens, int64_t batch, int32_t* next, uint8_t* at_leaf) const;

  int64_t num_nodes() const { return static_cast<int64_t>(children_.size()); }
  // The sorted child tokens of node (for masks built on another device).
  std::vector<int32_t> child_tokens(int32_t node) const;

 private:
  void check_state(int32_t state, const char* what) const;
  int32_t find_child(int32_t node, int32_t token) const;

  // children_[n]: (token, child node) pairs of node n, sorted by token
  std::vector<std::vector<std::pair<int32_t, int32_t>>> children_;
};

}  // namespace ponder
