// TokenTrie: the literal example of token_trie.h, masks, leaves and refused input.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "token_trie.h"

using ponder::TokenTrie;

namespace {

// steps {[5, 7], [5, 9], [6]} under one root (node 0)
TokenTrie example() {
  TokenTrie t;
  const int32_t root = t.add_root();
  const int32_t roots[3] = {root, root, root};
  const int64_t indptr[4] = {0, 2, 4, 5};
  const int32_t tokens[5] = {5, 7, 5, 9, 6};
  t.insert(roots, indptr, tokens, 3, 10);
  return t;
}

}  // namespace

PONDER_TEST(token_trie_header_example) {
  TokenTrie t = example();
  CHECK_EQ(t.num_nodes(), 5);
  const std::vector<int32_t> top = t.child_tokens(0);
  CHECK_EQ(top.size(), 2u);
  CHECK_EQ(top[0], 5);
  CHECK_EQ(top[1], 6);
  const int32_t states[3] = {0, 0, TokenTrie::kNoState};
  const int64_t tokens[3] = {5, 6, 3};
  int32_t next[3];
  uint8_t leaf[3];
  t.advance(states, tokens, 3, next, leaf);
  CHECK_EQ(next[0], 1);
  CHECK_EQ(leaf[0], 0);
  CHECK_EQ(leaf[1], 1);  // [6] is a whole step
  CHECK_EQ(next[2], TokenTrie::kNoState);
  CHECK_EQ(leaf[2], 0);
}

PONDER_TEST(token_trie_mask_keeps_children_only) {
  TokenTrie t = example();
  // two rows of vocab 10 in a stride of 12; row 1 is unconstrained
  std::vector<float> logits(24);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i);
  const int32_t states[2] = {1, TokenTrie::kNoState};
  t.mask(states, 2, logits.data(), 10, 12);
  for (int v = 0; v < 10; ++v) {
    if (v == 7 || v == 9) {
      CHECK_EQ(logits[v], static_cast<float>(v));
    } else {
      CHECK(std::isinf(logits[v]) && logits[v] < 0);
    }
  }
  CHECK_EQ(logits[10], 10.0f);  // padding past vocab is not touched
  for (int v = 12; v < 24; ++v) CHECK_EQ(logits[v], static_cast<float>(v));
}

PONDER_TEST(token_trie_refuses_bad_input_without_change) {
  TokenTrie t = example();
  const int32_t roots[1] = {0};
  const int64_t empty[2] = {0, 0};
  const int32_t tok[1] = {1};
  CHECK_THROWS(t.insert(roots, empty, tok, 1, 10), std::invalid_argument);
  const int64_t one[2] = {0, 1};
  const int32_t big[1] = {10};
  CHECK_THROWS(t.insert(roots, one, big, 1, 10), std::out_of_range);
  CHECK_EQ(t.num_nodes(), 5);
  const int32_t states[1] = {0};
  const int64_t off[1] = {7};  // 7 is not a child of the root
  int32_t next[1];
  uint8_t leaf[1];
  CHECK_THROWS(t.advance(states, off, 1, next, leaf), std::invalid_argument);
  const int32_t unknown[1] = {99};
  std::vector<float> logits(10);
  CHECK_THROWS(t.mask(unknown, 1, logits.data(), 10, 10), std::out_of_range);
}
