// Example 02: rotations before low-bit quantization.
//  1. Which orthogonal matrix each LLM width gets (hadamard_construction).
//  2. Per linear weight of the real checkpoint: E2M-ATQ relative error ‖W − Ŵ‖_F/‖W‖_F without rotation and
//     after KOTMS (W·(Cᵀ⊗B)); ARB binarization error without rotation and after OKT (a reconstruction).
//  3. Synthetic activations with LLM-like outlier channels (Student-t(3), 4 channels ×50), 1024 calibration
//     and 1024 test tokens of width 256: per-token int4 and MXFP4 relative errors with no rotation, a
//     randomised Hadamard, and TORQ (a reconstruction; calibrated on the calibration tokens).
//
// Usage: example_02_rotations_real_checkpoint [checkpoint.bin]
#include <lowbit/asym_ternary.hpp>
#include <lowbit/binary.hpp>
#include <lowbit/hadamard.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/kotms.hpp>
#include <lowbit/mxfp.hpp>
#include <lowbit/okt.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/torq.hpp>

#include "shared_models.hpp"

#include <cstdio>
#include <exception>
#include <random>

namespace {

double rel(const lowbit::matrix_f& a, const lowbit::matrix_f& b) { return static_cast<double>((a - b).norm() / a.norm()); }

lowbit::matrix_f outlier_activations(Eigen::Index tokens, Eigen::Index d, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::student_t_distribution<float> t(3.0f);
    lowbit::matrix_f x(tokens, d);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = t(rng);
    for (Eigen::Index j : {3, 17, 100, 201}) x.col(j) *= 50.0f;
    return x;
}

} // namespace

int main(int argc, char** argv) try {
    std::printf("1. Hadamard construction per width\n");
    for (Eigen::Index n : {288, 768, 1376, 1536, 3584, 4096, 4544, 11008, 13696, 14336, 29568})
        std::printf("  %6ld  %s\n", static_cast<long>(n), lowbit::hadamard_construction(n).describe().c_str());

    const std::filesystem::path path =
        argc > 1 ? std::filesystem::path(argv[1]) : lowbit_examples::model_file("stories260K", "stories260K.bin");
    auto ck = lowbit::io::read_llama2c(path);
    std::printf("\n2. %s: relative weight error, no rotation vs learned rotation\n", path.string().c_str());
    std::printf("  %-14s %-8s %-7s %9s %9s %9s %9s\n", "tensor", "shape", "l x r", "ATQ none", "ATQ KOTMS", "bin none",
                "bin OKT");
    int kb = 0, ob = 0, count = 0;
    double sum[4] = {0, 0, 0, 0};
    for (const auto& [name, w] : lowbit::io::linear_weights(ck)) {
        const auto kot = lowbit::learn_kotms(*w);
        const auto okt = lowbit::learn_okt(*w);
        const lowbit::matrix_f wk = lowbit::rotate_weights(*w, kot.rotation), wo = lowbit::rotate_weights(*w, okt.rotation);
        const double e[4] = {rel(*w, lowbit::quantize_e2m_atq(*w).dequantize()), rel(wk, lowbit::quantize_e2m_atq(wk).dequantize()),
                             rel(*w, lowbit::binarize(*w, lowbit::arb{}).dequantize()),
                             rel(wo, lowbit::binarize(wo, lowbit::arb{}).dequantize())};
        char shape[32], lr[32];
        std::snprintf(shape, sizeof shape, "%ldx%ld", static_cast<long>(w->rows()), static_cast<long>(w->cols()));
        std::snprintf(lr, sizeof lr, "%ldx%ld", static_cast<long>(kot.rotation.left.rows()), static_cast<long>(kot.rotation.right.rows()));
        std::printf("  %-14s %-8s %-7s %9.4f %9.4f %9.4f %9.4f\n", name.c_str(), shape, lr, e[0], e[1], e[2], e[3]);
        kb += e[1] < e[0];
        ob += e[3] < e[2];
        for (int k = 0; k < 4; ++k) sum[k] += e[k];
        ++count;
    }
    std::printf("  %-14s %-8s %-7s %9.4f %9.4f %9.4f %9.4f\n", "mean", "", "", sum[0] / count, sum[1] / count, sum[2] / count,
                sum[3] / count);
    std::printf("  KOTMS lowers the E2M-ATQ error of %d/%d tensors; OKT lowers the binary error of %d/%d\n", kb, count, ob, count);

    std::printf("\n3. synthetic outlier activations (1024 tokens x 256, t(3), 4 channels x50): relative error\n");
    const auto calib = outlier_activations(1024, 256, 10), test = outlier_activations(1024, 256, 11);
    const lowbit::hadamard_transform had(256, {.randomized = true, .seed = 7});
    const auto torq = lowbit::learn_torq(calib);
    const lowbit::matrix_f xh = lowbit::rotate_activations(test, had), xt = lowbit::rotate_activations(test, torq);
    auto int4 = [](const lowbit::matrix_f& x) { return rel(x, lowbit::quantize_per_token(x).dequantize()); };
    auto mx = [](const lowbit::matrix_f& x) { return rel(x, lowbit::mx_fake_quantize<lowbit::mxfp4>(x)); };
    auto mx_token = [](const lowbit::matrix_f& x) { // mean over tokens of the per-token relative error
        const lowbit::matrix_f q = lowbit::mx_fake_quantize<lowbit::mxfp4>(x);
        double s = 0;
        for (Eigen::Index i = 0; i < x.rows(); ++i) s += rel(x.row(i), q.row(i));
        return s / static_cast<double>(x.rows());
    };
    std::printf("  %-46s %10s %12s %12s\n", "rotation", "int4/token", "MXFP4 (Frob)", "MXFP4/token");
    std::printf("  %-46s %10.4f %12.4f %12.4f\n", "none", int4(test), mx(test), mx_token(test));
    std::printf("  %-46s %10.4f %12.4f %12.4f\n", "randomised Hadamard", int4(xh), mx(xh), mx_token(xh));
    std::printf("  %-46s %10.4f %12.4f %12.4f\n", ("TORQ (" + torq.level2_name + ")").c_str(), int4(xt), mx(xt), mx_token(xt));
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
