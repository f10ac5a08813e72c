// Shared error helpers for the host core. The core never aborts: bad input throws
// std::invalid_argument / std::out_of_range (pybind11 maps them to ValueError / IndexError)
// and pool exhaustion throws KVCacheFull.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ponder {

// Raised when the KV page pool cannot satisfy a request. The structure that raises it is left
// exactly as it was before the call.
class KVCacheFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

template <typename... Args>
[[noreturn]] void throw_invalid(const Args&... args) {
  throw std::invalid_argument(detail::concat(args...));
}

template <typename... Args>
[[noreturn]] void throw_out_of_range(const Args&... args) {
  throw std::out_of_range(detail::concat(args...));
}

}  // namespace ponder

#define PONDER_CHECK_ARG(cond, ...) \
  do {                              \
    if (!(cond)) ::ponder::throw_invalid(__VA_ARGS__); \
  } while (0)

#define PONDER_CHECK_RANGE(cond, ...) \
  do {                                \
    if (!(cond)) ::ponder::throw_out_of_range(__VA_ARGS__); \
  } while (0)
