// Example 09: what SpecQuant's two stages (lowbit/specquant.hpp, docs/specquant.md) do to the block
// linears of a real checkpoint (llama-21M-en: Llama, dim 512, hidden 1536 = 2⁹·3, 6 layers, BF16).
//
// Activations: every block linear's input captured over 2 windows of 512 tokens of the checkpoint's dev
// token stream (reference/dev_ids.u32, from its start). Stage 1: λ = smoothquant_scales_from_absmax(
// activation_absmax(X), W, α = 0.5), W' = W·diag(λ). Stage 2: spectral_truncate(W', η) per row.
// Printed per linear slot (summed over the layers), for W (no smoothing) and W' (smoothed):
//   K/in      mean K_i / in (kept frequencies per input column; at most (in/2 + 1)/in ≈ 0.5)
//   reals/in  stored reals of the kept coefficients / in (DC and Nyquist 1 real, others 2)
//   |R|/|W|   ‖R‖_F / ‖W'‖_F over the slot
// and the activation range max|X| / mean_j max|X_j| before and after smoothing.
//
// Usage: example_09_specquant_real_checkpoint [models_dir/llama-21M-en] [eta ...]
#include <lowbit/io/sharded_safetensors.hpp>
#include <lowbit/model/hf_model.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/specquant.hpp>

#include "shared_models.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

namespace {

std::vector<int> read_ids(const std::filesystem::path& path, std::size_t count) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path.string());
    std::vector<int> ids;
    std::uint32_t v = 0;
    while (ids.size() < count && f.read(reinterpret_cast<char*>(&v), 4)) ids.push_back(static_cast<int>(v)); // little-endian host
    return ids;
}

struct totals {
    double k = 0, reals = 0, r2 = 0, w2 = 0;
    double rows = 0, cols = 0;
    void add(const lowbit::spectral_split& s, const lowbit::matrix_f& w) {
        for (Eigen::Index k_i : s.kept) k += static_cast<double>(k_i) / static_cast<double>(w.cols());
        reals += static_cast<double>(s.stored_reals());
        r2 += s.residual.cast<double>().squaredNorm();
        w2 += w.cast<double>().squaredNorm();
        rows += static_cast<double>(w.rows());
        cols = static_cast<double>(w.cols());
    }
};

} // namespace

int main(int argc, char** argv) try {
    const std::filesystem::path folder = argc > 1 ? std::filesystem::path(argv[1]) : lowbit_examples::model_file("llama-21M-en");
    std::vector<double> etas;
    for (int a = 2; a < argc; ++a) etas.push_back(std::stod(argv[a]));
    if (etas.empty()) etas = {0.995, 0.9};

    const auto st = lowbit::io::sharded_safetensors::open(folder);
    const auto model = lowbit::load_hf_model(folder);
    const auto ids = read_ids(folder / "reference" / "dev_ids.u32", 1024);
    const auto inputs = lowbit::calibration_inputs(model, ids, 512, 2);
    const char* hf[lowbit::linear_slots] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                            "mlp.gate_proj",    "mlp.down_proj",    "mlp.up_proj"};
    std::printf("%s: %zu layers, %zu calibration tokens\n", folder.string().c_str(), inputs.size(), ids.size());
    for (double eta : etas) {
        std::printf("\neta = %.3f\n%-6s %5s %5s | %-26s | %-26s | %s\n", eta, "slot", "in", "out",
                    "W:  K/in reals/in |R|/|W|", "W': K/in reals/in |R|/|W|", "act range before -> after");
        std::array<totals, 2> all{};
        for (int s = 0; s < lowbit::linear_slots; ++s) {
            std::array<totals, 2> t{};
            double range_before = 0, range_after = 0;
            Eigen::Index out = 0, in = 0;
            for (std::size_t l = 0; l < inputs.size(); ++l) {
                const lowbit::matrix_f w = st.to_matrix("model.layers." + std::to_string(l) + "." + hf[s] + ".weight");
                const lowbit::matrix_f& x = inputs[l][static_cast<std::size_t>(s)];
                const lowbit::vector_f a = lowbit::activation_absmax(x);
                const lowbit::vector_f lambda = lowbit::smoothquant_scales_from_absmax(a, w, 0.5);
                const lowbit::matrix_f ws = lowbit::smooth_weights(w, lambda);
                const lowbit::vector_f as = lowbit::activation_absmax(lowbit::smooth_activations(x, lambda));
                range_before += a.maxCoeff() / a.mean();
                range_after += as.maxCoeff() / as.mean();
                t[0].add(lowbit::spectral_truncate(w, {eta, 0, 0}), w);
                t[1].add(lowbit::spectral_truncate(ws, {eta, 0, 0}), ws);
                out = w.rows();
                in = w.cols();
            }
            const double layers = static_cast<double>(inputs.size());
            std::printf("%-6s %5lld %5lld |", lowbit::slot_name(static_cast<lowbit::linear_slot>(s)), static_cast<long long>(in),
                        static_cast<long long>(out));
            for (int v = 0; v < 2; ++v) {
                std::printf(" %6.3f %8.3f %8.4f   |", t[static_cast<std::size_t>(v)].k / t[static_cast<std::size_t>(v)].rows,
                            t[static_cast<std::size_t>(v)].reals / (t[static_cast<std::size_t>(v)].rows * t[static_cast<std::size_t>(v)].cols),
                            std::sqrt(t[static_cast<std::size_t>(v)].r2 / t[static_cast<std::size_t>(v)].w2));
                all[static_cast<std::size_t>(v)].k += t[static_cast<std::size_t>(v)].k;
                all[static_cast<std::size_t>(v)].reals += t[static_cast<std::size_t>(v)].reals;
                all[static_cast<std::size_t>(v)].r2 += t[static_cast<std::size_t>(v)].r2 / t[static_cast<std::size_t>(v)].w2;
                all[static_cast<std::size_t>(v)].rows += t[static_cast<std::size_t>(v)].rows;
                all[static_cast<std::size_t>(v)].cols += t[static_cast<std::size_t>(v)].rows * t[static_cast<std::size_t>(v)].cols;
            }
            std::printf(" %6.1f -> %5.1f\n", range_before / layers, range_after / layers);
        }
        std::printf("%-18s |", "all (mean of rows)");
        for (int v = 0; v < 2; ++v)
            std::printf(" %6.3f %8.3f %8s   |", all[static_cast<std::size_t>(v)].k / all[static_cast<std::size_t>(v)].rows,
                        all[static_cast<std::size_t>(v)].reals / all[static_cast<std::size_t>(v)].cols, "");
        std::printf("\n");
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
