// exp_nonpositive8 (the vector softmax exponential) against std::exp and, lane by lane, the
// scalar exp_nonpositive, including the cut-off at -87, -inf, NaN and signed zeros.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "check.h"
#include "cpu_math.h"

PONDER_TEST(exp_nonpositive8_matches_std_exp_and_the_scalar_version) {
  std::vector<float> xs = {0.f, -0.f, -1e-30f, -1e-7f, -0.5f, -0.6931472f, -1.f, -3.25f, -10.f, -50.f, -86.9f,
                           -87.f, -87.0001f, -100.f, -1e30f, -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN()};
  for (int i = 0; i <= 2000; ++i) xs.push_back(-87.f * float(i) / 2000.f);
  while (xs.size() % 8) xs.push_back(-2.f);
  for (size_t i = 0; i < xs.size(); i += 8) {
    ponder::f8 x;
    for (int l = 0; l < 8; ++l) x[l] = xs[i + l];
    const ponder::f8 y = ponder::exp_nonpositive8(x);
    for (int l = 0; l < 8; ++l) {
      const float xi = xs[i + l], got = y[l], scalar = ponder::exp_nonpositive(xi);
      if (std::isnan(xi)) {
        CHECK(std::isnan(got));
        continue;
      }
      if (xi < -87.f) {
        CHECK_EQ(got, 0.f);
        CHECK_EQ(scalar, 0.f);
        continue;
      }
      // the same polynomial, lane for lane; fused or separate multiply-adds may differ by an ulp
      CHECK_NEAR(got, scalar, 2.5e-7 * scalar);
      // Cephes' expf polynomial: about 1 ulp from the true value
      CHECK_NEAR(got, std::exp(double(xi)), 3e-7 * std::exp(double(xi)));
    }
  }
}
