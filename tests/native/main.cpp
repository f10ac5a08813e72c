#include <exception>
#include <iostream>

#include "check.h"

int main() {
  auto& cases = ponder_test::registry();
  if (cases.empty()) {
    std::cerr << "no native tests registered\n";
    return 2;
  }
  for (const auto& c : cases) {
    const int before = ponder_test::failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      ponder_test::fail(c.name.c_str(), 0, std::string("uncaught exception: ") + e.what());
    }
    std::cout << (ponder_test::failures() == before ? "PASS " : "FAIL ") << c.name << "\n";
  }
  std::cout << cases.size() << " native tests, " << ponder_test::failures() << " failed checks\n";
  return ponder_test::failures() == 0 ? 0 : 1;
}
