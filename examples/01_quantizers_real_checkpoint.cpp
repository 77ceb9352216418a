// Example 01: quantize every linear weight of a real llama2.c checkpoint with the element quantizers
// and print the per-tensor relative error ‖W − Ŵ‖_F / ‖W‖_F:
//   rtn4     RTN int4, asymmetric, per row                       (rtn.hpp)
//   rtn4g32  RTN int4, asymmetric, per group of 32 (smaller tail) (rtn.hpp)
//   ternary  absmean symmetric ternary (BitNet b1.58), per row   (ternary.hpp)
//   e2m-atq  E2M-ATQ order 1, per row, S = I                      (asym_ternary.hpp)
//   e2m-atq2 E2M-ATQ order 2, per row, S = I                      (asym_ternary.hpp)
//   binary   ARB binarization (μ + α b), per row                  (binary.hpp)
//   mxfp4    OCP MXFP4, blocks of 32 (smaller tail)              (mxfp.hpp)
// No calibration activations are used (S = I), so the output-error view equals the Frobenius view.
//
// Usage: example_01_quantizers_real_checkpoint [checkpoint.bin]
// Default: <models>/stories260K/stories260K.bin, <models> = $LOWBIT_MODELS_DIR or ../shared/models.
#include <lowbit/asym_ternary.hpp>
#include <lowbit/binary.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/metrics.hpp>
#include <lowbit/mxfp.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/ternary.hpp>

#include "models.hpp"

#include <array>
#include <cstdio>
#include <exception>

int main(int argc, char** argv) try {
    const std::filesystem::path path =
        argc > 1 ? std::filesystem::path(argv[1]) : lowbit_test::stories260k("stories260K.bin");
    auto ck = lowbit::io::read_llama2c(path);
    const auto& c = ck.config;
    std::printf("checkpoint %s: dim %d, hidden %d, layers %d, heads %d/%d, vocab %d\n", path.string().c_str(), c.dim,
                c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size);
    std::printf("relative error ||W - W_hat||_F / ||W||_F per linear tensor\n\n");
    constexpr int k = 7;
    const char* names[k] = {"rtn4", "rtn4g32", "ternary", "e2m-atq", "e2m-atq2", "binary", "mxfp4"};
    std::printf("%-14s %-8s", "tensor", "shape");
    for (const char* n : names) std::printf(" %9s", n);
    std::printf("\n");
    std::array<double, k> sum{};
    int count = 0;
    lowbit::e2m_atq order2;
    order2.order = 2;
    const lowbit::per_group g32{32, lowbit::tail_policy::smaller_last};
    for (const auto& [name, w] : lowbit::io::linear_weights(ck)) {
        const lowbit::matrix_f wh[k] = {
            lowbit::quantize_rtn(*w, {4}).dequantize(),
            lowbit::quantize_rtn(*w, {4}, g32).dequantize(),
            lowbit::quantize_ternary(*w, lowbit::absmean{}).dequantize(),
            lowbit::quantize_e2m_atq(*w).dequantize(),
            lowbit::quantize_e2m_atq(*w, order2).dequantize(),
            lowbit::binarize(*w, lowbit::arb{}).dequantize(),
            lowbit::quantize_mx<lowbit::mxfp4>(*w, lowbit::tail_policy::smaller_last).dequantize()};
        char shape[32];
        std::snprintf(shape, sizeof shape, "%ldx%ld", static_cast<long>(w->rows()), static_cast<long>(w->cols()));
        std::printf("%-14s %-8s", name.c_str(), shape);
        for (int i = 0; i < k; ++i) {
            const double e = lowbit::relative_error(*w, wh[i]);
            sum[static_cast<std::size_t>(i)] += e;
            std::printf(" %9.4f", e);
        }
        std::printf("\n");
        ++count;
    }
    std::printf("%-14s %-8s", "mean", "");
    for (double s : sum) std::printf(" %9.4f", s / count);
    std::printf("\n");
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
