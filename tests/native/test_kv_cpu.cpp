// The host K/V writes: copy_pages_cpu against a page-by-page loop over every plane, and its
// refusals (ids out of range, repeated destinations, a destination that is a source) leaving the
// cache as it was; append_kv_cpu's slot check.
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "rotary_kv_cpu.h"

namespace {

std::vector<uint8_t> filled(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i * 131 + 7) % 251);
  return v;
}

}  // namespace

PONDER_TEST(copy_pages_cpu_matches_a_page_loop_in_every_plane) {
  for (int64_t page_bytes : {1, 12, 4096 + 4}) {
    const int64_t planes = 6, pages = 9;
    const std::vector<int32_t> src = {0, 3, 3, 8}, dst = {1, 4, 7, 2};
    std::vector<uint8_t> kv = filled(static_cast<size_t>(planes * pages * page_bytes));
    std::vector<uint8_t> want = kv;
    for (int64_t p = 0; p < planes; ++p) {
      for (size_t i = 0; i < src.size(); ++i) {
        uint8_t* base = want.data() + p * pages * page_bytes;
        std::memcpy(base + dst[i] * page_bytes, base + src[i] * page_bytes, static_cast<size_t>(page_bytes));
      }
    }
    ponder::copy_pages_cpu(kv.data(), planes, pages, page_bytes, src.data(), dst.data(),
                           static_cast<int64_t>(src.size()));
    CHECK(kv == want);
    ponder::copy_pages_cpu(kv.data(), planes, pages, page_bytes, nullptr, nullptr, 0);  // no pairs: nothing
    CHECK(kv == want);
  }
}

PONDER_TEST(copy_pages_cpu_refuses_before_writing) {
  const int64_t planes = 2, pages = 5, page_bytes = 8;
  std::vector<uint8_t> kv = filled(static_cast<size_t>(planes * pages * page_bytes));
  const std::vector<uint8_t> before = kv;
  auto call = [&](std::vector<int32_t> src, std::vector<int32_t> dst) {
    ponder::copy_pages_cpu(kv.data(), planes, pages, page_bytes, src.data(), dst.data(),
                           static_cast<int64_t>(src.size()));
  };
  CHECK_THROWS(call({0, 1}, {2, 5}), std::out_of_range);
  CHECK_THROWS(call({-1}, {2}), std::out_of_range);
  CHECK_THROWS(call({0, 1}, {3, 3}), std::invalid_argument);
  CHECK_THROWS(call({0, 3}, {3, 4}), std::invalid_argument);
  CHECK_THROWS(ponder::copy_pages_cpu(kv.data(), 0, pages, page_bytes, nullptr, nullptr, 0), std::invalid_argument);
  CHECK(kv == before);
}

PONDER_TEST(append_kv_cpu_checks_every_slot_before_writing) {
  std::vector<float> k_plane(4 * 2, 0.f), v_plane(4 * 2, 0.f);
  const std::vector<float> k = {1, 2, 3, 4}, v = {5, 6, 7, 8};
  const std::vector<int64_t> bad = {1, 4};
  CHECK_THROWS(ponder::append_kv_cpu(k_plane.data(), v_plane.data(), 4, 2, k.data(), 2, v.data(), 2, bad.data(), 2),
               std::out_of_range);
  for (float x : k_plane) CHECK_EQ(x, 0.f);
  const std::vector<int64_t> slots = {3, -1};
  ponder::append_kv_cpu(k_plane.data(), v_plane.data(), 4, 2, k.data(), 2, v.data(), 2, slots.data(), 2);
  CHECK_EQ(k_plane[6], 1.f);
  CHECK_EQ(v_plane[7], 6.f);
  CHECK_EQ(k_plane[0], 0.f);
}
