// A minimal native test harness: PONDER_TEST registers a function, CHECK* record failures with
// file:line, and main() runs everything and exits non-zero on any failure (or when no test ran).
#pragma once

#include <cmath>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

namespace ponder_test {

struct Case {
  std::string name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

// n draws of N(0, 1) from gen, for test inputs.
inline std::vector<float> normal_floats(size_t n, std::mt19937& gen) {
  std::normal_distribution<float> n01;
  std::vector<float> out(n);
  for (auto& x : out) x = n01(gen);
  return out;
}

inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  std::cerr << file << ":" << line << ": FAILED: " << what << "\n";
}

}  // namespace ponder_test

#define PONDER_TEST(name)                                                     \
  static void name();                                                         \
  static ::ponder_test::Registrar name##_registrar(#name, name);              \
  static void name()

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) ::ponder_test::fail(__FILE__, __LINE__, #cond);             \
  } while (0)

#define CHECK_EQ(a, b)                                                                   \
  do {                                                                                   \
    const auto va_ = (a);                                                                \
    const auto vb_ = (b);                                                                \
    if (!(va_ == vb_))                                                                   \
      ::ponder_test::fail(__FILE__, __LINE__,                                            \
                          std::string(#a " == " #b " (") + std::to_string(va_) + " vs " + \
                              std::to_string(vb_) + ")");                                \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                             \
  do {                                                                                    \
    const double va_ = (a);                                                               \
    const double vb_ = (b);                                                               \
    if (!(std::fabs(va_ - vb_) <= (tol)))                                                 \
      ::ponder_test::fail(__FILE__, __LINE__,                                             \
                          std::string(#a " ~= " #b " (") + std::to_string(va_) + " vs " +  \
                              std::to_string(vb_) + ")");                                 \
  } while (0)

#define CHECK_THROWS(expr, Exc)                                                           \
  do {                                                                                    \
    bool thrown_ = false;                                                                 \
    try {                                                                                 \
      (void)(expr);                                                                       \
    } catch (const Exc&) {                                                                \
      thrown_ = true;                                                                     \
    } catch (...) {                                                                       \
      ::ponder_test::fail(__FILE__, __LINE__, #expr " threw something other than " #Exc); \
      thrown_ = true;                                                                     \
    }                                                                                     \
    if (!thrown_) ::ponder_test::fail(__FILE__, __LINE__, #expr " did not throw " #Exc);  \
  } while (0)
