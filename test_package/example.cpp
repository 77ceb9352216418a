// Minimal consumer: quantizes a small matrix to symmetric ternary and checks the result.
#include <lowbit/ternary.hpp>

#include <cstdio>

int main() {
    lowbit::matrix_f w(2, 4);
    w << 0.9f, -1.1f, 0.05f, 1.0f, //
        -0.2f, 0.3f, -0.25f, 0.0f;
    const auto q = lowbit::quantize_ternary(w, lowbit::optimal_threshold{});
    const bool ok = q.codes(0, 0) == 1 && q.codes(0, 1) == -1 && q.codes(0, 2) == 0 && q.scale(0) > 0.9f;
    std::printf("lowbit %d.%d.%d consumer: %s\n", lowbit::version.major, lowbit::version.minor,
                lowbit::version.patch, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
