#include "attention_plan.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>

#include "common.h"

namespace ponder {

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// Read-only view of the batch with the per-(branch, column) quantities the trie walk needs.
struct Batch {
  const int32_t* tables;
  const int32_t* lens;
  int64_t max_pages;
  int64_t page_size;

  int32_t page(int32_t b, int64_t col) const { return tables[b * max_pages + col]; }
  int64_t used_columns(int32_t b) const { return (lens[b] + page_size - 1) / page_size; }
  // Valid tokens of branch b in column col: page_size for a full page, fewer for the last page,
  // 0 past the branch's end.
  int64_t tokens(int32_t b, int64_t col) const {
    const int64_t left = static_cast<int64_t>(lens[b]) - col * page_size;
    return std::max<int64_t>(0, std::min(page_size, left));
  }
};

// Branches that hold the same page with the same number of valid tokens in column `col`.
struct Group {
  std::vector<int32_t> members;  // ascending branch ids
  int64_t col;
};

// Splits `members` (all active in column col) by (page, valid tokens); groups come out ordered
// by their smallest member so the plan's order follows the batch's order.
std::vector<Group> partition(const Batch& batch, const std::vector<int32_t>& members, int64_t col) {
  std::vector<std::tuple<int32_t, int64_t, int32_t>> keyed;
  keyed.reserve(members.size());
  for (int32_t b : members) keyed.emplace_back(batch.page(b, col), batch.tokens(b, col), b);
  std::sort(keyed.begin(), keyed.end());
  std::vector<Group> groups;
  for (size_t i = 0; i < keyed.size(); ++i) {
    if (i == 0 || std::get<0>(keyed[i]) != std::get<0>(keyed[i - 1]) ||
        std::get<1>(keyed[i]) != std::get<1>(keyed[i - 1])) {
      groups.push_back({{}, col});
    }
    groups.back().members.push_back(std::get<2>(keyed[i]));
  }
  std::sort(groups.begin(), groups.end(),
            [](const Group& a, const Group& b) { return a.members.front() < b.members.front(); });
  return groups;
}

struct Segment {
  std::vector<int32_t> queries;
  int64_t col_begin, col_end, num_tokens;
};

// Depth-first walk of the trie of block-table rows: each group is extended while all its members
// keep sharing full pages; where some members end or their pages differ, the segment closes and
// the members that go on are partitioned into child groups.
std::vector<Segment> find_segments(const Batch& batch, int64_t num_branches) {
  std::vector<Segment> segments;
  std::vector<int32_t> all(static_cast<size_t>(num_branches));
  for (int64_t b = 0; b < num_branches; ++b) all[b] = static_cast<int32_t>(b);
  std::vector<Group> stack;
  auto push_children = [&stack](std::vector<Group> groups) {
    for (auto it = groups.rbegin(); it != groups.rend(); ++it) stack.push_back(std::move(*it));
  };
  if (num_branches > 0) push_children(partition(batch, all, 0));
  while (!stack.empty()) {
    Group g = std::move(stack.back());
    stack.pop_back();
    const int32_t lead = g.members.front();
    // Column col > g.col joins the segment when every column before it is a full page and each
    // member holds the lead's page there with as many valid tokens. Full pages of two branches
    // hold the same count; past the shorter one's full pages the counts agree only when the
    // lengths do. Each member's row is compared with the lead's as one contiguous run.
    const int64_t lead_len = batch.lens[lead];
    const int64_t lead_full = lead_len / batch.page_size;
    int64_t end = std::min(batch.used_columns(lead), lead_full + 1);
    const int32_t* lead_row = batch.tables + lead * batch.max_pages;
    for (size_t i = 1; i < g.members.size() && end > g.col + 1; ++i) {
      const int32_t b = g.members[i];
      if (batch.lens[b] != lead_len) end = std::min(end, std::min<int64_t>(lead_full, batch.lens[b] / batch.page_size));
      if (end <= g.col + 1) break;
      const int32_t* row = batch.tables + b * batch.max_pages;
      end = std::mismatch(row + g.col + 1, row + end, lead_row + g.col + 1).first - row;
    }
    end = std::max(end, g.col + 1);
    int64_t tokens = 0;
    for (int64_t col = g.col; col < end; ++col) tokens += batch.tokens(lead, col);
    std::vector<int32_t> going_on;
    if (end < batch.max_pages) {
      for (int32_t b : g.members) {
        if (batch.tokens(b, end) > 0) going_on.push_back(b);
      }
    }
    segments.push_back({std::move(g.members), g.col, end, tokens});
    if (!going_on.empty()) push_children(partition(batch, going_on, end));
  }
  return segments;
}

void check_inputs(const int32_t* block_tables, int64_t batch, int64_t max_pages, const int32_t* seq_lens,
                  int64_t page_size, int64_t num_pages, int64_t max_pages_per_item, int64_t max_queries_per_item) {
  PONDER_CHECK_ARG(batch >= 0 && batch <= kInt32Max, "batch must lie in [0, 2^31), got ", batch);
  PONDER_CHECK_ARG(max_pages >= 0 && max_pages <= kInt32Max, "max_pages must lie in [0, 2^31), got ", max_pages);
  PONDER_CHECK_ARG(page_size >= 1 && page_size <= (int64_t{1} << 30), "page_size must lie in [1, 2^30], got ",
                   page_size);
  PONDER_CHECK_ARG(num_pages >= 0, "num_pages must be >= 0 (0 = unchecked), got ", num_pages);
  PONDER_CHECK_ARG(max_pages_per_item >= 0, "max_pages_per_item must be >= 0 (0 = no split), got ",
                   max_pages_per_item);
  PONDER_CHECK_ARG(max_queries_per_item >= 0, "max_queries_per_item must be >= 0 (0 = no split), got ",
                   max_queries_per_item);
  if (batch == 0) return;
  PONDER_CHECK_ARG(seq_lens != nullptr, "seq_lens must not be null for batch ", batch);
  PONDER_CHECK_ARG(max_pages == 0 || block_tables != nullptr, "block_tables must not be null for batch ", batch);
  const int64_t capacity = max_pages * page_size;
  for (int64_t b = 0; b < batch; ++b) {
    PONDER_CHECK_ARG(seq_lens[b] >= 1 && seq_lens[b] <= capacity, "seq_lens[", b, "] = ", seq_lens[b],
                     " must lie in [1, ", capacity, "]: at least the decode query's own token and at most max_pages * "
                     "page_size = ", max_pages, " * ", page_size);
    const int64_t used = (seq_lens[b] + page_size - 1) / page_size;
    for (int64_t col = 0; col < used; ++col) {
      const int32_t p = block_tables[b * max_pages + col];
      PONDER_CHECK_RANGE(p >= 0 && (num_pages == 0 || p < num_pages), "block_tables[", b, ", ", col, "] = ", p,
                         num_pages == 0 ? std::string(" must be a page id >= 0")
                                        : detail::concat(" must be a page id in [0, ", num_pages, ")"));
    }
  }
}

struct Item {
  const Segment* segment;
  int32_t segment_id;
  int64_t col_begin, col_end, token_start, num_tokens;
  size_t query_begin, query_end;  // range of segment->queries
};

}  // namespace

AttentionPlan build_attention_plan(const int32_t* block_tables, int64_t batch, int64_t max_pages,
                                   const int32_t* seq_lens, int64_t page_size, int64_t num_pages,
                                   int64_t max_pages_per_item, int64_t max_queries_per_item) {
  check_inputs(block_tables, batch, max_pages, seq_lens, page_size, num_pages, max_pages_per_item,
               max_queries_per_item);
  const Batch view{block_tables, seq_lens, max_pages, page_size};
  const std::vector<Segment> segments = find_segments(view, batch);

  // Split segments into items: page chunks outside, query groups inside, so the groups reading
  // one chunk get neighbouring program ids.
  std::vector<Item> shared, single;
  for (size_t s = 0; s < segments.size(); ++s) {
    const Segment& seg = segments[s];
    const int64_t chunk = max_pages_per_item > 0 ? max_pages_per_item : seg.col_end - seg.col_begin;
    const size_t group = max_queries_per_item > 0 ? static_cast<size_t>(max_queries_per_item) : seg.queries.size();
    for (int64_t c0 = seg.col_begin; c0 < seg.col_end; c0 += chunk) {
      const int64_t c1 = std::min(seg.col_end, c0 + chunk);
      const int64_t start = c0 * page_size;
      const int64_t n = std::min((c1 - c0) * page_size, seg.col_begin * page_size + seg.num_tokens - start);
      for (size_t q0 = 0; q0 < seg.queries.size(); q0 += group) {
        const size_t q1 = std::min(seg.queries.size(), q0 + group);
        Item item{&seg, static_cast<int32_t>(s), c0, c1, start, n, q0, q1};
        (q1 - q0 >= 2 ? shared : single).push_back(item);
      }
    }
  }

  int64_t total_pages = 0, total_slots = 0;
  for (const auto* list : {&shared, &single}) {
    for (const Item& it : *list) {
      total_pages += it.col_end - it.col_begin;
      total_slots += static_cast<int64_t>(it.query_end - it.query_begin);
    }
  }
  PONDER_CHECK_ARG(total_pages <= kInt32Max && total_slots <= kInt32Max,
                   "the plan needs ", total_pages, " page entries and ", total_slots,
                   " partial-output slots, more than int32 indices can address; split the batch");

  AttentionPlan plan;
  plan.num_queries = static_cast<int32_t>(batch);
  plan.num_segments = static_cast<int32_t>(segments.size());
  plan.num_shared_items = static_cast<int32_t>(shared.size());
  const size_t num_items = shared.size() + single.size();
  plan.item_page_indptr.reserve(num_items + 1);
  plan.item_query_indptr.reserve(num_items + 1);
  plan.item_pages.reserve(static_cast<size_t>(total_pages));
  plan.item_queries.reserve(static_cast<size_t>(total_slots));
  plan.item_page_indptr.push_back(0);
  plan.item_query_indptr.push_back(0);
  std::vector<int32_t> merge_count(static_cast<size_t>(batch) + 1, 0);
  for (const auto* list : {&shared, &single}) {
    for (const Item& it : *list) {
      const int32_t lead = it.segment->queries.front();
      for (int64_t col = it.col_begin; col < it.col_end; ++col) plan.item_pages.push_back(view.page(lead, col));
      for (size_t q = it.query_begin; q < it.query_end; ++q) {
        const int32_t b = it.segment->queries[q];
        plan.item_queries.push_back(b);
        ++merge_count[static_cast<size_t>(b) + 1];
      }
      plan.item_page_indptr.push_back(static_cast<int32_t>(plan.item_pages.size()));
      plan.item_query_indptr.push_back(static_cast<int32_t>(plan.item_queries.size()));
      plan.item_token_start.push_back(static_cast<int32_t>(it.token_start));
      plan.item_num_tokens.push_back(static_cast<int32_t>(it.num_tokens));
      plan.item_segment.push_back(it.segment_id);
      plan.max_item_queries = std::max(plan.max_item_queries, static_cast<int32_t>(it.query_end - it.query_begin));
    }
  }

  // Counting sort of the slots by query: slots of one query keep item order.
  plan.merge_indptr.assign(static_cast<size_t>(batch) + 1, 0);
  for (int64_t b = 0; b < batch; ++b) plan.merge_indptr[b + 1] = plan.merge_indptr[b] + merge_count[b + 1];
  std::vector<int32_t> cursor(plan.merge_indptr.begin(), plan.merge_indptr.end() - 1);
  plan.merge_slots.assign(plan.item_queries.size(), 0);
  for (size_t slot = 0; slot < plan.item_queries.size(); ++slot) {
    plan.merge_slots[cursor[plan.item_queries[slot]]++] = static_cast<int32_t>(slot);
  }
  return plan;
}

}  // namespace ponder
