// Shared-prefix ("cascade") attention plan for a decode batch of search branches.
//
// Branches of a search tree share the KV pages of their common ancestors. The plan finds the
// tree segments of a batch -- maximal runs of block-table columns whose pages are shared by the
// same set of branches -- and turns each into work items (pages, query rows) so a kernel reads a
// shared prefix once for all branches below it, instead of once per branch. Every item writes a
// partial output with its log-sum-exp per query row; the merge lists say which partial slots
// make up each query's final output.
//
// Example (page size S = 4, three branches, -1 = padding):
//
//   block_tables = [[0, 1, 2, -1],     seq_lens = [10, 14, 7]
//                   [0, 1, 3,  4],
//                   [0, 5, -1, -1]]
//
//   segment 0: pages [0]    tokens [0, 4)   queries {0, 1, 2}   (shared by all)
//   segment 1: pages [1]    tokens [4, 8)   queries {0, 1}      (shared by siblings 0 and 1)
//   segment 2: pages [2]    tokens [8, 10)  queries {0}         (branch 0's own tail, partial)
//   segment 3: pages [3, 4] tokens [8, 14)  queries {1}
//   segment 4: pages [5]    tokens [4, 7)   queries {2}
//
// Segments are found as a trie over the rows of block_tables: a group of branches that shared
// every page so far is split where their pages (or the number of valid tokens in a page)
// differ. Page tables built by forking (ponder.PageTable) can only share a page if they share
// every page before it, so for them the segments are exactly the runs of pages shared by the
// same set of branches; a page that two groups coincidentally hold after they diverged is read
// once per group, which is still correct.
#pragma once

#include <cstdint>
#include <vector>

namespace ponder {

// All arrays are int32 CSR, ready to copy to the device. Item i covers tokens
// [item_token_start[i], item_token_start[i] + item_num_tokens[i]) of each of its query rows,
// stored in pages item_pages[item_page_indptr[i] .. item_page_indptr[i+1]) (the last one possibly
// partial). Its query rows are item_queries[item_query_indptr[i] .. item_query_indptr[i+1]); the
// partial output of item i for its j-th query goes to slot item_query_indptr[i] + j. Query b's
// final output merges slots merge_slots[merge_indptr[b] .. merge_indptr[b+1]).
struct AttentionPlan {
  int32_t num_queries = 0;       // B: one decode query row per branch
  int32_t num_segments = 0;      // tree segments before splitting into items
  int32_t num_shared_items = 0;  // items [0, num_shared_items) have >= 2 queries; the rest 1
  int32_t max_item_queries = 0;  // largest item_query_indptr[i+1] - item_query_indptr[i]
  std::vector<int32_t> item_page_indptr;   // [I+1]
  std::vector<int32_t> item_pages;         // [item_page_indptr[I]]
  std::vector<int32_t> item_token_start;   // [I]
  std::vector<int32_t> item_num_tokens;    // [I]
  std::vector<int32_t> item_segment;       // [I]
  std::vector<int32_t> item_query_indptr;  // [I+1]
  std::vector<int32_t> item_queries;       // [num_slots], branch index of each slot
  std::vector<int32_t> merge_indptr;       // [B+1]
  std::vector<int32_t> merge_slots;        // [num_slots]

  int32_t num_items() const { return static_cast<int32_t>(item_token_start.size()); }
  int32_t num_slots() const { return static_cast<int32_t>(item_queries.size()); }
};

// Builds the plan for `batch` branches.
//   block_tables: [batch, max_pages] row-major page ids; columns past ceil(seq_lens[b] / page_size)
//                 are ignored (padding, any value).
//   seq_lens:     [batch] tokens in each branch's KV, each in [1, max_pages * page_size].
//   num_pages:    page ids must lie in [0, num_pages); 0 checks only that they are >= 0.
//   max_pages_per_item:   split segments longer than this many pages into several items
//                         (0 = never split); lets a long shared prefix use many programs.
//   max_queries_per_item: split a segment's query rows into groups of at most this many
//                         (0 = never split); bounds the rows of one kernel tile.
// Items are ordered shared-first (items with >= 2 queries, then single-query items); within
// each class, segments in depth-first order, and the query groups of one page chunk are
// adjacent so programs that read the same pages run close together.
// Throws std::invalid_argument / std::out_of_range naming the offending argument and value.
AttentionPlan build_attention_plan(const int32_t* block_tables, int64_t batch, int64_t max_pages,
                                   const int32_t* seq_lens, int64_t page_size, int64_t num_pages,
                                   int64_t max_pages_per_item, int64_t max_queries_per_item);

}  // namespace ponder
