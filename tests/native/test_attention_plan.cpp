// Native tests of the shared-prefix attention plan: literal hand-built batches, bad input, and a
// randomised coverage check over generated search forests (runs under ASan/UBSan in CI).
#include <algorithm>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention_plan.h"
#include "check.h"

using ponder::AttentionPlan;
using ponder::build_attention_plan;
using I32 = std::vector<int32_t>;

namespace {

std::string show(const I32& v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}

#define CHECK_VEC(actual, expected)                                                                         \
  do {                                                                                                      \
    const I32 a_ = (actual), e_ = (expected);                                                               \
    if (a_ != e_) ::ponder_test::fail(__FILE__, __LINE__, std::string(#actual " == ") + show(e_) + ", got " + show(a_)); \
  } while (0)

AttentionPlan plan_of(const I32& tables, const I32& lens, int64_t page_size, int64_t max_pages_per_item = 0,
                      int64_t max_queries_per_item = 0, int64_t num_pages = 0) {
  const int64_t batch = static_cast<int64_t>(lens.size());
  const int64_t max_pages = batch ? static_cast<int64_t>(tables.size()) / batch : 0;
  return build_attention_plan(tables.data(), batch, max_pages, lens.data(), page_size, num_pages, max_pages_per_item,
                              max_queries_per_item);
}

}  // namespace

// The example of attention_plan.h: a prefix shared by all, one shared by a sibling pair, tails.
PONDER_TEST(attention_plan_three_level_tree) {
  const AttentionPlan p = plan_of({0, 1, 2, -1, /**/ 0, 1, 3, 4, /**/ 0, 5, -1, -1}, {10, 14, 7}, 4);
  CHECK_EQ(p.num_queries, 3);
  CHECK_EQ(p.num_segments, 5);
  CHECK_EQ(p.num_shared_items, 2);
  CHECK_EQ(p.max_item_queries, 3);
  CHECK_VEC(p.item_page_indptr, (I32{0, 1, 2, 3, 5, 6}));
  CHECK_VEC(p.item_pages, (I32{0, 1, 2, 3, 4, 5}));
  CHECK_VEC(p.item_token_start, (I32{0, 4, 8, 8, 4}));
  CHECK_VEC(p.item_num_tokens, (I32{4, 4, 2, 6, 3}));
  CHECK_VEC(p.item_segment, (I32{0, 1, 2, 3, 4}));
  CHECK_VEC(p.item_query_indptr, (I32{0, 3, 5, 6, 7, 8}));
  CHECK_VEC(p.item_queries, (I32{0, 1, 2, 0, 1, 0, 1, 2}));
  CHECK_VEC(p.merge_indptr, (I32{0, 3, 6, 8}));
  CHECK_VEC(p.merge_slots, (I32{0, 3, 5, 1, 4, 6, 2, 7}));
}

// Two trees in one batch (rows interleaved): tree A = rows 0, 2; tree B = rows 1, 3.
PONDER_TEST(attention_plan_forest_of_two_trees) {
  const AttentionPlan p = plan_of({7, 8, -1, /**/ 3, 4, 9, /**/ 7, 1, -1, /**/ 3, 4, -1}, {3, 6, 4, 4}, 2);
  CHECK_EQ(p.num_segments, 5);
  CHECK_EQ(p.num_shared_items, 2);
  CHECK_VEC(p.item_segment, (I32{0, 3, 1, 2, 4}));
  CHECK_VEC(p.item_page_indptr, (I32{0, 1, 3, 4, 5, 6}));
  CHECK_VEC(p.item_pages, (I32{7, 3, 4, 8, 1, 9}));
  CHECK_VEC(p.item_token_start, (I32{0, 0, 2, 2, 4}));
  CHECK_VEC(p.item_num_tokens, (I32{2, 4, 1, 2, 2}));
  CHECK_VEC(p.item_query_indptr, (I32{0, 2, 4, 5, 6, 7}));
  CHECK_VEC(p.item_queries, (I32{0, 2, 1, 3, 0, 2, 1}));
  CHECK_VEC(p.merge_indptr, (I32{0, 2, 4, 6, 7}));
  CHECK_VEC(p.merge_slots, (I32{0, 4, 2, 6, 1, 5, 3}));
}

PONDER_TEST(attention_plan_no_sharing_is_one_item_per_branch) {
  const AttentionPlan p = plan_of({4, 5, /**/ 6, -1, /**/ 2, 3}, {5, 1, 6}, 3);
  CHECK_EQ(p.num_segments, 3);
  CHECK_EQ(p.num_shared_items, 0);
  CHECK_EQ(p.max_item_queries, 1);
  CHECK_VEC(p.item_pages, (I32{4, 5, 6, 2, 3}));
  CHECK_VEC(p.item_page_indptr, (I32{0, 2, 3, 5}));
  CHECK_VEC(p.item_token_start, (I32{0, 0, 0}));
  CHECK_VEC(p.item_num_tokens, (I32{5, 1, 6}));
  CHECK_VEC(p.item_queries, (I32{0, 1, 2}));
  CHECK_VEC(p.merge_indptr, (I32{0, 1, 2, 3}));
  CHECK_VEC(p.merge_slots, (I32{0, 1, 2}));
}

PONDER_TEST(attention_plan_partial_last_pages) {
  // A fork that appended nothing yet shares the partial last page with the same valid count.
  AttentionPlan p = plan_of({0, 1, /**/ 0, 1}, {3, 3}, 2);
  CHECK_EQ(p.num_segments, 1);
  CHECK_VEC(p.item_pages, (I32{0, 1}));
  CHECK_VEC(p.item_num_tokens, (I32{3}));
  CHECK_VEC(p.item_queries, (I32{0, 1}));
  // Same page id but different valid counts: the partial page is read per owner, never merged.
  p = plan_of({0, 1, /**/ 0, 1}, {4, 3}, 2);
  CHECK_EQ(p.num_segments, 3);
  CHECK_VEC(p.item_pages, (I32{0, 1, 1}));
  CHECK_VEC(p.item_token_start, (I32{0, 2, 2}));
  CHECK_VEC(p.item_num_tokens, (I32{2, 2, 1}));
  CHECK_VEC(p.item_queries, (I32{0, 1, 0, 1}));
  CHECK_VEC(p.merge_slots, (I32{0, 2, 1, 3}));
  // A branch that ends exactly where its sibling goes on.
  p = plan_of({5, 6, /**/ 5, -1}, {4, 2}, 2);
  CHECK_EQ(p.num_segments, 2);
  CHECK_VEC(p.item_pages, (I32{5, 6}));
  CHECK_VEC(p.item_queries, (I32{0, 1, 0}));
  CHECK_VEC(p.item_num_tokens, (I32{2, 2}));
}

PONDER_TEST(attention_plan_splits_long_segments_and_wide_query_sets) {
  AttentionPlan p = plan_of({0, 1, 2, 3, 4}, {10}, 2, /*max_pages_per_item=*/2);
  CHECK_EQ(p.num_segments, 1);
  CHECK_VEC(p.item_page_indptr, (I32{0, 2, 4, 5}));
  CHECK_VEC(p.item_token_start, (I32{0, 4, 8}));
  CHECK_VEC(p.item_num_tokens, (I32{4, 4, 2}));
  CHECK_VEC(p.item_segment, (I32{0, 0, 0}));
  CHECK_VEC(p.merge_slots, (I32{0, 1, 2}));

  p = plan_of({9, 9, 9, 9, 9}, {2, 2, 2, 2, 2}, 2, 0, /*max_queries_per_item=*/2);
  CHECK_EQ(p.num_shared_items, 2);
  CHECK_EQ(p.max_item_queries, 2);
  CHECK_VEC(p.item_query_indptr, (I32{0, 2, 4, 5}));
  CHECK_VEC(p.item_queries, (I32{0, 1, 2, 3, 4}));
  CHECK_VEC(p.item_pages, (I32{9, 9, 9}));
}

PONDER_TEST(attention_plan_empty_batch) {
  const AttentionPlan p = plan_of({}, {}, 16);
  CHECK_EQ(p.num_items(), 0);
  CHECK_EQ(p.num_slots(), 0);
  CHECK_VEC(p.merge_indptr, (I32{0}));
  CHECK_VEC(p.item_page_indptr, (I32{0}));
}

PONDER_TEST(attention_plan_rejects_bad_input) {
  CHECK_THROWS(plan_of({0, 1}, {0}, 2), std::invalid_argument);      // a decode row needs a token
  CHECK_THROWS(plan_of({0, 1}, {5}, 2), std::invalid_argument);      // longer than its table
  CHECK_THROWS(plan_of({0, -1}, {3}, 2), std::out_of_range);         // padding inside the used pages
  CHECK_THROWS(plan_of({0, 8}, {3}, 2, 0, 0, 8), std::out_of_range);  // page id past the pool
  CHECK_THROWS(plan_of({0}, {1}, 0), std::invalid_argument);
  CHECK_THROWS(plan_of({0}, {1}, 1, -1), std::invalid_argument);
  CHECK_THROWS(plan_of({0}, {1}, 1, 0, -3), std::invalid_argument);
  // Padding past the used pages may hold anything.
  const AttentionPlan p = plan_of({3, -7, 123456}, {2}, 2, 0, 0, 4);
  CHECK_VEC(p.item_pages, (I32{3}));
  bool named = false;
  try {
    plan_of({0, 1, 2, -1}, {2, 3}, 2);
  } catch (const std::out_of_range& e) {
    named = std::string(e.what()).find("block_tables[1, 1] = -1") != std::string::npos;
  }
  CHECK(named);
}

// Random forests grown like ponder's PageTable (fork shares pages, appending to a shared
// partial page copies it first): every (query, token) pair must be covered exactly once by
// an item that holds the branch's own page, and no page is read twice without a chunk split.
PONDER_TEST(attention_plan_random_forests_cover_every_token_once) {
  uint64_t state = 0x243F6A8885A308D3ull;
  auto next = [&state](int64_t n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int64_t>((state >> 33) % static_cast<uint64_t>(n));
  };
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t S = 1 + next(4);
    struct Node { I32 pages; int64_t len; };
    std::vector<Node> nodes;
    int32_t fresh = 0;
    const int64_t roots = 1 + next(3);
    for (int64_t r = 0; r < roots; ++r) nodes.push_back({{}, 0});
    std::vector<size_t> leaves;
    for (size_t i = 0; i < nodes.size() && nodes.size() < 40; ++i) {
      const int64_t children = (i < static_cast<size_t>(roots) || next(3) > 0) ? next(4) : 0;
      if (children == 0) {
        if (nodes[i].len > 0) leaves.push_back(i);
        continue;
      }
      for (int64_t c = 0; c < children; ++c) {
        Node child = nodes[i];
        const int64_t add = next(3 * S + 1);
        for (int64_t t = 0; t < add; ++t) {
          if (child.len % S == 0) child.pages.push_back(fresh++);
          else if (t == 0) child.pages.back() = fresh++;  // copy-on-write of the shared partial page
          ++child.len;
        }
        nodes.push_back(child);
      }
    }
    if (leaves.empty()) continue;
    int64_t max_pages = 0;
    for (size_t l : leaves) max_pages = std::max<int64_t>(max_pages, static_cast<int64_t>(nodes[l].pages.size()));
    I32 tables, lens;
    for (size_t l : leaves) {
      for (int64_t c = 0; c < max_pages; ++c) {
        tables.push_back(c < static_cast<int64_t>(nodes[l].pages.size()) ? nodes[l].pages[c] : -1);
      }
      lens.push_back(static_cast<int32_t>(nodes[l].len));
    }
    const int64_t chunk = next(3), group = next(3);
    const AttentionPlan p = plan_of(tables, lens, S, chunk, group, fresh);
    std::vector<std::vector<int>> covered(leaves.size());
    for (size_t b = 0; b < leaves.size(); ++b) covered[b].assign(static_cast<size_t>(lens[b]), 0);
    for (int32_t i = 0; i < p.num_items(); ++i) {
      CHECK((i < p.num_shared_items) == (p.item_query_indptr[i + 1] - p.item_query_indptr[i] >= 2));
      for (int32_t s = p.item_query_indptr[i]; s < p.item_query_indptr[i + 1]; ++s) {
        const int32_t b = p.item_queries[s];
        for (int32_t t = 0; t < p.item_num_tokens[i]; ++t) {
          const int64_t pos = p.item_token_start[i] + t;
          const int32_t page = p.item_pages[p.item_page_indptr[i] + t / S];
          CHECK(pos < lens[b] && tables[b * max_pages + pos / S] == page);
          if (pos < lens[b]) ++covered[b][pos];
        }
      }
    }
    for (const auto& row : covered) {
      for (int c : row) CHECK_EQ(c, 1);
    }
    if (chunk == 0) {
      // Tree-shaped tables: each distinct (column, page) is read exactly once.
      I32 seen(static_cast<size_t>(fresh), 0);
      for (int32_t page : p.item_pages) ++seen[page];
      for (int32_t n : seen) CHECK(n <= (group == 0 ? 1 : static_cast<int32_t>(leaves.size())));
    }
    for (int32_t b = 0; b < p.num_queries; ++b) {
      for (int32_t m = p.merge_indptr[b]; m < p.merge_indptr[b + 1]; ++m) CHECK_EQ(p.item_queries[p.merge_slots[m]], b);
    }
  }
}
