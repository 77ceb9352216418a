// Example 03: ternarize a weight matrix (absmean, ternary.hpp), pack it at 2 bits and at 1.6 bits
// per weight (pack.hpp), run y = W·x with int8 activations quantized inside (gemm.hpp), and compare
// with Eigen's FP32 product of the dequantized matrix: relative error and wall time.
//
// Usage: example_03_packed_gemv [rows cols]    (default 4096 4096)
#include <lowbit/gemm.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/ternary.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>

namespace {

template <class Fn>
double median_us(Fn&& fn, int reps = 21) {
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        fn();
        t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::nth_element(t.begin(), t.begin() + reps / 2, t.end());
    return t[static_cast<std::size_t>(reps / 2)];
}

} // namespace

int main(int argc, char** argv) try {
    const Eigen::Index rows = argc > 2 ? std::atol(argv[1]) : 4096, cols = argc > 2 ? std::atol(argv[2]) : 4096;
    std::mt19937_64 rng(2026);
    std::normal_distribution<float> g(0.0f, 0.02f);
    lowbit::matrix_f w(rows, cols);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
    lowbit::vector_f x(cols);
    for (Eigen::Index j = 0; j < cols; ++j) x(j) = g(rng) * 50.0f;

    const auto t = lowbit::quantize_ternary(w, lowbit::absmean{});      // codes in {-1,0,1}, scale per row
    const lowbit::vector_f alpha = t.scale.col(0);
    const auto p2 = lowbit::pack<lowbit::ternary2>(t.codes, alpha);      // 2 bits per weight
    const auto p3 = lowbit::pack<lowbit::ternary_base3>(t.codes, alpha); // 1.6 bits per weight
    const lowbit::matrix_f wq = t.dequantize();

    const lowbit::vector_f y_ref = wq * x;
    const lowbit::vector_f y2 = lowbit::gemv(p2, x);
    const lowbit::vector_f y3 = lowbit::gemv(p3, x);
    const lowbit::vector_f yf = lowbit::gemv(p2, x, lowbit::act_fp32{});
    std::printf("W %ldx%ld ternary (absmean); kernels dispatch to %s\n", static_cast<long>(rows), static_cast<long>(cols),
                lowbit::isa_name(lowbit::best_isa()));
    std::printf("%-28s %8s %14s %10s\n", "kernel", "bits/w", "rel. error", "time us");
    lowbit::vector_f y(rows);
    const double te = median_us([&] { y.noalias() = wq * x; });
    std::printf("%-28s %8.3f %14s %10.1f\n", "Eigen FP32 (dequantized)", 32.0, "reference", te);
    std::printf("%-28s %8.3f %14.2e %10.1f\n", "ternary2 x int8", p2.bits_per_weight(), (y2 - y_ref).norm() / y_ref.norm(),
                median_us([&] { y = lowbit::gemv(p2, x); }));
    std::printf("%-28s %8.3f %14.2e %10.1f\n", "ternary_base3 x int8", p3.bits_per_weight(), (y3 - y_ref).norm() / y_ref.norm(),
                median_us([&] { y = lowbit::gemv(p3, x); }));
    std::printf("%-28s %8.3f %14.2e %10.1f\n", "ternary2 x fp32", p2.bits_per_weight(), (yf - y_ref).norm() / y_ref.norm(),
                median_us([&] { y = lowbit::gemv(p2, x, lowbit::act_fp32{}); }, 5));
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
