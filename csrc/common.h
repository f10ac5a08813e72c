// Shared error helpers for the host core. The core never aborts: bad input throws
// std::invalid_argument / std::out_of_range (pybind11 maps them to ValueError / IndexError)
// and pool exhaustion throws KVCacheFull.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace ponder {

// Raised when the KV page pool cannot satisfy a request. The structure that raises it is left
// exactly as it was before the call.
class KVCacheFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
// Error messages are built by appending to a std::string, never through iostreams: number
// formatting in an ostream goes through std::locale facets, and a toolchain that links
// libstdc++ statically into the extension (while the interpreter has already loaded the shared
// one) ends up with two locale registries that disagree, so `os << 5` jumps into the wrong facet
// and crashes. Integers print in decimal, floating-point values as "%g" (an ostream's default),
// bool as 1 / 0, char as the character.
inline void append(std::string& out, const std::string& s) { out += s; }
inline void append(std::string& out, std::string_view s) { out.append(s.data(), s.size()); }
inline void append(std::string& out, const char* s) { out += (s != nullptr ? s : "(null)"); }
inline void append(std::string& out, char c) { out += c; }
template <typename T>
void append(std::string& out, const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    out += v ? '1' : '0';
  } else if constexpr (std::is_integral_v<T> || std::is_enum_v<T>) {
    if constexpr (std::is_enum_v<T>) {
      out += std::to_string(static_cast<std::underlying_type_t<T>>(v));
    } else {
      out += std::to_string(v);
    }
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    const int n = std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
    out.append(buf, n > 0 ? static_cast<size_t>(n) : 0);
  } else {
    static_assert(sizeof(T) == 0, "concat: no text form for this argument type");
  }
}

template <typename... Args>
std::string concat(const Args&... args) {
  std::string out;
  (append(out, args), ...);
  return out;
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
