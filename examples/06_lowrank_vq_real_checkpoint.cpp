// Example 06: low rank and vector quantization on a real llama2.c checkpoint (stories260K).
//
// Part 1 — PCDVQ vs plain k-means VQ at equal *total* bits per weight. Every stored bit is counted:
// indices, FP16 row scales (16 bits per row), the random-Hadamard sign vector (n bits per tensor) and
// every data-dependent codebook (FP16, K·d·16 bits). PCDVQ's codebooks (greedy E8 directions, χ₈
// Lloyd–Max magnitudes) are generated from (b_d, b_r) and cost nothing per tensor.
//   PCDVQ (docs/sources.md §8.2): randomized Hadamard per row (W ↦ W·Q, Q = D_s H/√n), row scale
//     s_i = ‖w_i‖/√n (FP16), b_d direction + b_r magnitude bits per 8-vector; Ŵ = Ŵ_rot·Qᵀ. Both
//     splits b_r = 1 and b_r = 2 (the 3rd-party default) are shown, and b_r = 1 without the rotation.
//   k-means d ∈ {8, 4, 2}: k-means++ + Lloyd on the same FP16-scaled unit-RMS rows cut into d-vectors,
//     K the largest power of two whose indices + codebook fit PCDVQ's index + sign bits — per tensor
//     (-T, one codebook per tensor) or model-wide (-M, one codebook for all tensors, counted once).
//     A d = 8 variant without row scales spends the saved 16 bits per row on a larger codebook.
// Printed: relative weight error ‖W − Ŵ‖_F/‖W‖_F per tensor, and over the model with the total bits
// per weight of each coder (no k-means coder exceeds PCDVQ's total).
//
// Part 2 — binarizer with and without PSP (rank 4), in the output metric of the model's own
// activations: X = every block linear's input captured over 2 windows of 255 tokens of
// tinystories_dev.txt after the first 60,000 characters (the perplexity slice), S = XᵀX; PSP
// minimises ‖(W − Ŵ)Xᵀ‖ with that S. Output error ‖(W − Ŵ)Xᵀ‖_F/‖W Xᵀ‖_F on X and on held-out
// activations (2 windows of the first 60,000 characters).
//
// Usage: example_06_lowrank_vq_real_checkpoint [models_dir/stories260K]
#include <lowbit/binary.hpp>
#include <lowbit/hadamard.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/lowrank.hpp>
#include <lowbit/metrics.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/pcdvq.hpp>
#include <lowbit/vq.hpp>

#include "shared_models.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

float fp16(float x) { return static_cast<float>(Eigen::half(x)); }

// Rows scaled to unit RMS with FP16 scales s_i = fp16(‖w_i‖/√n).
lowbit::matrix_f row_normalized(const lowbit::matrix_f& w, lowbit::vector_f& scale) {
    scale.resize(w.rows());
    lowbit::matrix_f out = w;
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        scale(i) = fp16(w.row(i).norm() / std::sqrt(static_cast<float>(w.cols())));
        if (scale(i) > 0) out.row(i) /= scale(i);
    }
    return out;
}

lowbit::matrix_f fp16_rounded(lowbit::matrix_f m) {
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = fp16(m.data()[i]);
    return m;
}

// The randomized Hadamard rotation of a width (seeded per tensor) as a dense orthogonal Q.
lowbit::matrix_d rht_matrix(Eigen::Index n, std::uint64_t seed) {
    lowbit::hadamard_options o;
    o.randomized = true;
    o.seed = seed;
    return lowbit::hadamard_transform(n, o).matrix();
}

lowbit::matrix_f rotate(const lowbit::matrix_f& w, const lowbit::matrix_d& q) {
    return (w.cast<double>() * q).cast<float>();
}
lowbit::matrix_f unrotate(const lowbit::matrix_f& w, const lowbit::matrix_d& q) {
    return (w.cast<double>() * q.transpose()).cast<float>();
}

// PCDVQ with FP16 row scales.
lowbit::matrix_f pcdvq_roundtrip(const lowbit::matrix_f& w, const lowbit::pcdvq_codebook& book) {
    auto codes = lowbit::pcdvq_encode(w, book);
    for (Eigen::Index i = 0; i < codes.row_scale.size(); ++i) codes.row_scale(i) = fp16(codes.row_scale(i));
    return lowbit::pcdvq_decode(codes, book);
}

// Bits of a k-means code of nv d-vectors with a K-entry FP16 codebook: indices + codebook.
double codebook_bits(double nv, int d, Eigen::Index k) {
    return nv * std::log2(static_cast<double>(k)) + 16.0 * d * static_cast<double>(k);
}

// The largest power of two K ≤ nv whose indices + FP16 codebook fit `budget` bits.
Eigen::Index largest_k(double nv, int d, double budget) {
    Eigen::Index k = 1;
    while (2 * k <= static_cast<Eigen::Index>(nv) && codebook_bits(nv, d, 2 * k) <= budget) k *= 2;
    return k;
}

struct error_acc {
    double se = 0, bits = 0;
    void add(const lowbit::matrix_f& w, const lowbit::matrix_f& w_hat, double b) {
        se += (w - w_hat).cast<double>().squaredNorm();
        bits += b;
    }
};

std::vector<int> text_tokens(const lowbit::io::tokenizer& tok, const std::string& text) {
    return tok.encode(text, false, false, lowbit::io::dummy_prefix::separate);
}

} // namespace

int main(int argc, char** argv) try {
    const std::filesystem::path dir = argc > 1 ? std::filesystem::path(argv[1]) : lowbit_examples::model_file("stories260K", "stories260K.bin").parent_path();
    auto ck = lowbit::io::read_llama2c(dir / "stories260K.bin");
    const auto& cfg = ck.config;
    std::printf("checkpoint %s: dim %d, hidden %d, layers %d\n", (dir / "stories260K.bin").string().c_str(), cfg.dim,
                cfg.hidden_dim, cfg.n_layers);
    const auto all_linears = lowbit::io::linear_weights(ck);
    // Part 1 needs rows that split into 8-vectors: w2 ([dim x hidden], hidden = 172) is left out.
    std::vector<lowbit::io::linear_ref> linears;
    double total_weights = 0, total_ss = 0;
    for (const auto& l : all_linears)
        if (l.weight->cols() % 8 == 0) {
            linears.push_back(l);
            total_weights += static_cast<double>(l.weight->size());
            total_ss += l.weight->cast<double>().squaredNorm();
        }
    std::printf("part 1 uses %zu of %zu linear weights (%.0f weights; w2 has 172 columns, not a multiple of 8)\n",
                linears.size(), all_linears.size(), total_weights);

    // ---------------------------------------------------------------- Part 1: PCDVQ vs k-means
    std::printf("\n== Part 1: PCDVQ vs k-means VQ at equal total bits per weight ==\n");
    // Per tensor: the rotation Q, the rotated weights, unit-RMS rows (FP16 scales) cut into d-vectors.
    constexpr int dims[3] = {8, 4, 2};
    struct prepared {
        lowbit::matrix_d q;
        lowbit::matrix_f rot;
        lowbit::vector_f scale;
        lowbit::matrix_f vec[3]; // to_vectors(unit-RMS rows, d) for d = 8, 4, 2
        lowbit::matrix_f raw8;   // to_vectors(w, 8), no row scale
    };
    std::vector<prepared> prep;
    for (std::size_t t = 0; t < linears.size(); ++t) {
        const lowbit::matrix_f& w = *linears[t].weight;
        prepared p;
        p.q = rht_matrix(w.cols(), 1000 + t);
        p.rot = rotate(w, p.q);
        const lowbit::matrix_f unit = row_normalized(w, p.scale);
        for (int k = 0; k < 3; ++k) p.vec[k] = lowbit::to_vectors(unit, dims[k]);
        p.raw8 = lowbit::to_vectors(w, 8);
        prep.push_back(std::move(p));
    }
    auto stack = [&](auto get) {
        Eigen::Index nv = 0, d = get(prep[0]).cols();
        for (const auto& p : prep) nv += get(p).rows();
        lowbit::matrix_f all(nv, d);
        Eigen::Index at = 0;
        for (const auto& p : prep) {
            all.middleRows(at, get(p).rows()) = get(p);
            at += get(p).rows();
        }
        return all;
    };
    lowbit::matrix_f all_vec[3];
    for (int k = 0; k < 3; ++k) all_vec[k] = stack([k](const prepared& p) -> const lowbit::matrix_f& { return p.vec[k]; });
    const lowbit::matrix_f all_raw8 = stack([](const prepared& p) -> const lowbit::matrix_f& { return p.raw8; });
    double scale_bits = 0, sign_bits = 0;
    for (const auto& l : linears) {
        scale_bits += 16.0 * static_cast<double>(l.weight->rows());
        sign_bits += static_cast<double>(l.weight->cols());
    }

    for (const int bits : {8, 12, 16}) { // index bits per 8-vector: 1.0, 1.5, 2.0 b/w
        const auto t0 = std::chrono::steady_clock::now();
        const int bd1 = bits - 1, bd2 = bits - 2;
        // Candidates: the E8 points of squared norm ≤ 16 (norm ≤ 4, docs/sources.md §8.2).
        const auto book1 = lowbit::make_pcdvq_codebook({bd1, 1, 16, 100});
        const auto book2 = lowbit::make_pcdvq_codebook({bd2, 2, 16, 100});
        // Budget of a k-means coder (all bits but the FP16 row scales it shares with PCDVQ):
        // PCDVQ's index bits + the RHT sign bits k-means does not need.
        const double model_budget = total_weights / 8 * bits + sign_bits;
        Eigen::Index k_model[3];
        lowbit::kmeans_result km_model[3];
        lowbit::matrix_f cb_model[3];
        for (int k = 0; k < 3; ++k) {
            k_model[k] = largest_k(static_cast<double>(all_vec[k].rows()), dims[k], model_budget);
            km_model[k] = lowbit::weighted_kmeans(all_vec[k], lowbit::matrix_f(), {k_model[k], 20, 1});
            cb_model[k] = fp16_rounded(km_model[k].centroids);
        }
        // Unscaled variant: the saved scale bits buy index bits.
        const Eigen::Index k_raw = largest_k(static_cast<double>(all_raw8.rows()), 8, model_budget + scale_bits);
        const auto km_raw = lowbit::weighted_kmeans(all_raw8, lowbit::matrix_f(), {k_raw, 20, 1});
        const lowbit::matrix_f cb_raw = fp16_rounded(km_raw.centroids);

        std::printf("\n-- %d index bits per 8 weights (%.2f b/w + scales) --  PCDVQ b_d=%d,b_r=1 (min angle %.1f deg), "
                    "b_d=%d,b_r=2 (%.1f deg); model-wide k-means K = %ld (d=8), %ld (d=4), %ld (d=2), %ld (d=8 unscaled)\n",
                    bits, bits / 8.0, bd1, book1.min_angle * 180 / 3.141592653589793, bd2,
                    book2.min_angle * 180 / 3.141592653589793, static_cast<long>(k_model[0]), static_cast<long>(k_model[1]),
                    static_cast<long>(k_model[2]), static_cast<long>(k_raw));
        std::printf("%-14s %7s %7s | %7s %7s %7s %7s %7s %7s | %6s %9s\n", "tensor", "pcdvq1", "pcdvq2", "km8-T", "km8-M",
                    "km4-T", "km4-M", "km2-T", "km2-M", "b/w", "K8,K4,K2-T");
        // Accumulators: 0 pcdvq b_r=1, 1 pcdvq b_r=2, 2..7 k-means (d=8,4,2) × (tensor, model),
        // 8 pcdvq without RHT (b_r=1), 9 k-means d=8 model-wide unscaled.
        error_acc acc[10];
        Eigen::Index at[3] = {0, 0, 0};
        Eigen::Index at_raw = 0;
        for (std::size_t t = 0; t < linears.size(); ++t) {
            const lowbit::matrix_f& w = *linears[t].weight;
            const prepared& p = prep[t];
            const Eigen::Index m = w.rows(), n = w.cols();
            const double ww = static_cast<double>(w.size()), nv8 = ww / 8;
            const double pcdvq_bits = nv8 * bits + 16.0 * m + static_cast<double>(n); // indices + scales + RHT signs
            lowbit::matrix_f hat[8];
            hat[0] = unrotate(pcdvq_roundtrip(p.rot, book1), p.q);
            hat[1] = unrotate(pcdvq_roundtrip(p.rot, book2), p.q);
            acc[0].add(w, hat[0], pcdvq_bits);
            acc[1].add(w, hat[1], pcdvq_bits);
            acc[8].add(w, pcdvq_roundtrip(w, book1), pcdvq_bits - static_cast<double>(n));
            auto unscale = [&](const lowbit::matrix_f& v) {
                lowbit::matrix_f d = lowbit::from_vectors(v, m, n);
                for (Eigen::Index i = 0; i < m; ++i) d.row(i) *= p.scale(i);
                return d;
            };
            Eigen::Index kt[3];
            for (int k = 0; k < 3; ++k) {
                const double nv = static_cast<double>(p.vec[k].rows());
                kt[k] = largest_k(nv, dims[k], nv8 * bits + static_cast<double>(n));
                const auto km = lowbit::weighted_kmeans(p.vec[k], lowbit::matrix_f(), {kt[k], 30, 1});
                hat[2 + 2 * k] = unscale(lowbit::vq_decode(km.codes, fp16_rounded(km.centroids)));
                acc[2 + 2 * k].add(w, hat[2 + 2 * k], codebook_bits(nv, dims[k], kt[k]) + 16.0 * m);
                const std::vector<std::uint32_t> codes(km_model[k].codes.begin() + at[k],
                                                       km_model[k].codes.begin() + at[k] + p.vec[k].rows());
                at[k] += p.vec[k].rows();
                hat[3 + 2 * k] = unscale(lowbit::vq_decode(codes, cb_model[k]));
                acc[3 + 2 * k].add(w, hat[3 + 2 * k], nv * std::log2(static_cast<double>(k_model[k])) + 16.0 * m);
            }
            const std::vector<std::uint32_t> raw_codes(km_raw.codes.begin() + at_raw, km_raw.codes.begin() + at_raw + p.raw8.rows());
            at_raw += p.raw8.rows();
            acc[9].add(w, lowbit::from_vectors(lowbit::vq_decode(raw_codes, cb_raw), m, n),
                       nv8 * std::log2(static_cast<double>(k_raw)));
            std::printf("%-14s", linears[t].name.c_str());
            for (int k = 0; k < 8; ++k) std::printf(k == 2 ? " | %7.4f" : " %7.4f", lowbit::relative_error(w, hat[k]));
            std::printf(" | %6.3f %3ld,%ld,%ld\n", pcdvq_bits / ww, static_cast<long>(kt[0]), static_cast<long>(kt[1]),
                        static_cast<long>(kt[2]));
        }
        // Model-wide codebooks are counted once.
        for (int k = 0; k < 3; ++k) acc[3 + 2 * k].bits += 16.0 * dims[k] * static_cast<double>(k_model[k]);
        acc[9].bits += 16.0 * 8 * static_cast<double>(k_raw);
        const char* names[10] = {"PCDVQ (RHT, b_r=1)",        "PCDVQ (RHT, b_r=2)",        "k-means d=8 per tensor",
                                 "k-means d=8 model-wide",    "k-means d=4 per tensor",    "k-means d=4 model-wide",
                                 "k-means d=2 per tensor",    "k-means d=2 model-wide",    "PCDVQ without RHT (b_r=1)",
                                 "k-means d=8 model-wide, no row scales"};
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("totals, %d index bits per 8 weights (relative error over the %zu tensors, total bits per weight; %.1f s):\n",
                    bits, linears.size(), secs);
        for (int k = 0; k < 10; ++k)
            std::printf("  %-40s %7.4f   %6.3f b/w\n", names[k], std::sqrt(acc[k].se / total_ss), acc[k].bits / total_weights);
    }

    // ---------------------------------------------------------------- Part 2: PSP rank 4
    const auto tok = lowbit::io::read_tokenizer(dir / "tok512.bin", cfg.vocab_size);
    std::ifstream text_file(dir / "tinystories_dev.txt", std::ios::binary);
    std::stringstream ss;
    ss << text_file.rdbuf();
    const std::string text = ss.str();
    const auto model = lowbit::model_from_llama2c(ck);
    const auto calib = lowbit::calibration_inputs(model, text_tokens(tok, text.substr(60000, 6000)), 255, 2);
    const auto held = lowbit::calibration_inputs(model, text_tokens(tok, text.substr(0, 6000)), 255, 2);
    std::printf("\n== Part 2: binarizer with and without PSP (rank 4, 10 iterations), S = XᵀX of the model's own "
                "activations (%ld calibration tokens, %ld held-out) ==\n",
                static_cast<long>(calib[0][0].rows()), static_cast<long>(held[0][0].rows()));
    std::printf("relative output error ‖(W − Ŵ)Xᵀ‖/‖W Xᵀ‖; 'held' = on held-out activations\n");
    std::printf("%-14s %8s %8s %8s %8s | %8s %8s %8s %8s %7s\n", "tensor", "sign", "sign+PSP", "arb", "arb+PSP", "held:sgn",
                "sgn+PSP", "arb", "arb+PSP", "+b/w");
    auto sign_q = [](const lowbit::cref_matrix_f& m) { return lowbit::binarize(m, lowbit::sign_scale{}).dequantize(); };
    auto arb_q = [](const lowbit::cref_matrix_f& m) { return lowbit::binarize(m, lowbit::arb{}).dequantize(); };
    double acc[8] = {}, ref_c = 0, ref_h = 0, extra_bits = 0, weights = 0;
    for (std::size_t t = 0; t < all_linears.size(); ++t) {
        const lowbit::matrix_f& w = *all_linears[t].weight;
        const auto& xc = calib[t / lowbit::linear_slots][t % lowbit::linear_slots];
        const auto& xh = held[t / lowbit::linear_slots][t % lowbit::linear_slots];
        const lowbit::matrix_d s = xc.cast<double>().transpose() * xc.cast<double>();
        const auto ps = lowbit::psp_refine(w, sign_q, 4, 10, s, 1e-6);
        const auto pa = lowbit::psp_refine(w, arb_q, 4, 10, s, 1e-6);
        const lowbit::matrix_f hats[4] = {sign_q(w), ps.reconstruct(), arb_q(w), pa.reconstruct()};
        auto out_sq = [&](const lowbit::matrix_f& x, const lowbit::matrix_f& d) {
            return (d.cast<double>() * x.cast<double>().transpose()).squaredNorm();
        };
        const double rc = out_sq(xc, w), rh = out_sq(xh, w);
        double e[8];
        for (int k = 0; k < 4; ++k) {
            e[k] = out_sq(xc, w - hats[k]);
            e[4 + k] = out_sq(xh, w - hats[k]);
        }
        const double extra = 4.0 * static_cast<double>(w.rows() + w.cols()) * 16;
        std::printf("%-14s %8.4f %8.4f %8.4f %8.4f | %8.4f %8.4f %8.4f %8.4f %7.3f\n", all_linears[t].name.c_str(),
                    std::sqrt(e[0] / rc), std::sqrt(e[1] / rc), std::sqrt(e[2] / rc), std::sqrt(e[3] / rc), std::sqrt(e[4] / rh),
                    std::sqrt(e[5] / rh), std::sqrt(e[6] / rh), std::sqrt(e[7] / rh), extra / static_cast<double>(w.size()));
        for (int k = 0; k < 8; ++k) acc[k] += e[k];
        ref_c += rc;
        ref_h += rh;
        extra_bits += extra;
        weights += static_cast<double>(w.size());
    }
    std::printf("%-14s %8.4f %8.4f %8.4f %8.4f | %8.4f %8.4f %8.4f %8.4f %7.3f\n", "all", std::sqrt(acc[0] / ref_c),
                std::sqrt(acc[1] / ref_c), std::sqrt(acc[2] / ref_c), std::sqrt(acc[3] / ref_c), std::sqrt(acc[4] / ref_h),
                std::sqrt(acc[5] / ref_h), std::sqrt(acc[6] / ref_h), std::sqrt(acc[7] / ref_h), extra_bits / weights);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
