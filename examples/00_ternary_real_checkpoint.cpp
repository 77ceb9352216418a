// Example 00: quantize every linear weight of a real llama2.c checkpoint to symmetric ternary and
// print the per-tensor relative error ‖W − Ŵ‖_F / ‖W‖_F for three rules (absmean, TWN, optimal).
//
// Usage: example_00_ternary_real_checkpoint [checkpoint.bin]
// Default: <models>/stories260K/stories260K.bin, <models> = $LOWBIT_MODELS_DIR or ../shared/models
// beside the checkout.
#include <lowbit/io/llama2c.hpp>
#include <lowbit/ternary.hpp>

#include "shared_models.hpp"

#include <cstdio>
#include <exception>

int main(int argc, char** argv) try {
    const std::filesystem::path path =
        argc > 1 ? std::filesystem::path(argv[1]) : lowbit_examples::model_file("stories260K", "stories260K.bin");
    auto ck = lowbit::io::read_llama2c(path);
    const auto& c = ck.config;
    std::printf("checkpoint %s: dim %d, hidden %d, layers %d, heads %d/%d, vocab %d\n\n", path.string().c_str(),
                c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size);
    std::printf("%-14s %-10s %10s %10s %10s\n", "tensor", "shape", "absmean", "twn", "optimal");
    double sum[3] = {0, 0, 0};
    int count = 0;
    for (const auto& [name, w] : lowbit::io::linear_weights(ck)) {
        const double norm = w->norm();
        const double e[3] = {
            (*w - lowbit::quantize_ternary(*w, lowbit::absmean{}).dequantize()).norm() / norm,
            (*w - lowbit::quantize_ternary(*w, lowbit::twn{}).dequantize()).norm() / norm,
            (*w - lowbit::quantize_ternary(*w, lowbit::optimal_threshold{}).dequantize()).norm() / norm};
        char shape[32];
        std::snprintf(shape, sizeof shape, "%ldx%ld", static_cast<long>(w->rows()), static_cast<long>(w->cols()));
        std::printf("%-14s %-10s %10.4f %10.4f %10.4f\n", name.c_str(), shape, e[0], e[1], e[2]);
        for (int k = 0; k < 3; ++k) sum[k] += e[k];
        ++count;
    }
    std::printf("%-14s %-10s %10.4f %10.4f %10.4f\n", "mean", "", sum[0] / count, sum[1] / count, sum[2] / count);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
