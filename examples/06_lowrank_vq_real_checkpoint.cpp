// Example 06: low rank and vector quantization on a real llama2.c checkpoint (stories260K).
//
// Part 1 — PCDVQ vs plain k-means VQ at equal bits per weight. Every linear weight row is scaled by
// s_i = ‖w_i‖/√n (the same per-row scale for all three coders), split into 8-vectors, and coded with
//   pcdvq:    b_d direction bits (greedy E8 spherical code) + b_r magnitude bits (χ₈ Lloyd–Max);
//             the codebooks are generated, nothing is stored;
//   km-tensor: k-means (k-means++ + Lloyd) with one codebook per tensor, K the largest power of two
//             whose indices plus FP16 codebook fit the same total bits per weight (equal storage);
//   km-global: one codebook of 2^(b_d+b_r) centroids fitted on all vectors of the model — equal index
//             bits, its FP16 codebook is extra storage (reported), and it is fitted in-sample.
// Printed: relative weight error ‖W − Ŵ‖_F/‖W‖_F per tensor and model-wide.
//
// Part 2 — binarizer with and without PSP (rank 4). Output error with S = identity (no calibration
// activations in this example), i.e. the relative weight error, for the sign-and-scale and ARB
// binarizers. The rank-4 factors cost 4·(m+n)·16 bits per tensor (reported as bits per weight).
//
// Usage: example_06_lowrank_vq_real_checkpoint [checkpoint.bin]
#include <lowbit/binary.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/lowrank.hpp>
#include <lowbit/metrics.hpp>
#include <lowbit/pcdvq.hpp>
#include <lowbit/vq.hpp>

#include "models.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <vector>

namespace {

// Rows scaled to unit RMS (s_i = ‖w_i‖/√n), as PCDVQ does internally.
lowbit::matrix_f row_normalized(const lowbit::matrix_f& w, lowbit::vector_f& scale) {
    scale.resize(w.rows());
    lowbit::matrix_f out = w;
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        scale(i) = w.row(i).norm() / std::sqrt(static_cast<float>(w.cols()));
        if (scale(i) > 0) out.row(i) /= scale(i);
    }
    return out;
}

} // namespace

int main(int argc, char** argv) try {
    const std::filesystem::path path =
        argc > 1 ? std::filesystem::path(argv[1]) : lowbit_test::stories260k("stories260K.bin");
    auto ck = lowbit::io::read_llama2c(path);
    const auto& cfg = ck.config;
    std::printf("checkpoint %s: dim %d, hidden %d, layers %d\n", path.string().c_str(), cfg.dim, cfg.hidden_dim,
                cfg.n_layers);
    const auto all_linears = lowbit::io::linear_weights(ck);
    // Part 1 needs rows that split into 8-vectors: w2 ([dim x hidden], hidden = 172) is left out.
    std::vector<lowbit::io::linear_ref> linears;
    long long total_weights = 0;
    for (const auto& l : all_linears)
        if (l.weight->cols() % 8 == 0) {
            linears.push_back(l);
            total_weights += l.weight->size();
        }
    std::printf("part 1 uses %zu of %zu linear weights (%lld weights; w2 has 172 columns, not a multiple of 8)\n",
                linears.size(), all_linears.size(), total_weights);

    // ---------------------------------------------------------------- Part 1: PCDVQ vs k-means
    std::printf("\n== Part 1: PCDVQ vs k-means VQ (8-dim vectors, equal bits per weight) ==\n");
    struct config {
        int bd, br;
    };
    for (const config c : {config{7, 1}, config{11, 1}}) {
        const auto t0 = std::chrono::steady_clock::now();
        const auto book = lowbit::make_pcdvq_codebook({c.bd, c.br, c.bd <= 8 ? 6 : 8, 100});
        // k-means: one codebook over all row-normalized vectors of the model.
        std::vector<lowbit::matrix_f> vecs;
        Eigen::Index nv = 0;
        for (const auto& l : linears) {
            lowbit::vector_f s;
            vecs.push_back(lowbit::to_vectors(row_normalized(*l.weight, s), 8));
            nv += vecs.back().rows();
        }
        lowbit::matrix_f all(nv, 8);
        Eigen::Index at = 0;
        for (const auto& v : vecs) {
            all.middleRows(at, v.rows()) = v;
            at += v.rows();
        }
        const Eigen::Index k = Eigen::Index{1} << (c.bd + c.br);
        const auto km = lowbit::weighted_kmeans(all, lowbit::matrix_f(), {k, 10, 1});
        const double codebook_bits = static_cast<double>(k) * 8 * 16 / static_cast<double>(total_weights);
        std::printf("\nbits per weight (indices): %.3f   [PCDVQ b_d=%d b_r=%d, min angle %.1f deg | k-means K=%ld, "
                    "FP16 codebook adds %.3f b/w]\n",
                    (c.bd + c.br) / 8.0, c.bd, c.br, book.min_angle * 180.0 / 3.141592653589793, static_cast<long>(k),
                    codebook_bits);
        std::printf("%-14s %10s %10s %10s\n", "tensor", "pcdvq", "km-tensor", "km-global");
        double se_p = 0, se_k = 0, se_t = 0, ss = 0;
        at = 0;
        for (std::size_t t = 0; t < linears.size(); ++t) {
            const lowbit::matrix_f& w = *linears[t].weight;
            const auto dec_p = lowbit::pcdvq_decode(lowbit::pcdvq_encode(w, book), book);
            lowbit::vector_f s;
            (void)row_normalized(w, s);
            const Eigen::Index n = vecs[t].rows();
            std::vector<std::uint32_t> codes(km.codes.begin() + at, km.codes.begin() + at + n);
            at += n;
            lowbit::matrix_f dec_k = lowbit::from_vectors(lowbit::vq_decode(codes, km.centroids), w.rows(), w.cols());
            for (Eigen::Index i = 0; i < w.rows(); ++i) dec_k.row(i) *= s(i);
            // Per-tensor k-means at equal total bits: n·log2 K + 16·8·K <= (b_d + b_r)·n.
            Eigen::Index kt = 1;
            while (kt * 2 <= n && static_cast<double>(n) * std::log2(static_cast<double>(kt * 2)) + 128.0 * static_cast<double>(kt * 2) <=
                                      static_cast<double>((c.bd + c.br) * n))
                kt *= 2;
            const auto kmt = lowbit::weighted_kmeans(vecs[t], lowbit::matrix_f(), {kt, 30, 1});
            lowbit::matrix_f dec_t = lowbit::from_vectors(lowbit::vq_decode(kmt.codes, kmt.centroids), w.rows(), w.cols());
            for (Eigen::Index i = 0; i < w.rows(); ++i) dec_t.row(i) *= s(i);
            const double ep = lowbit::relative_error(w, dec_p), ek = lowbit::relative_error(w, dec_k),
                         et = lowbit::relative_error(w, dec_t);
            if (t < 7 || t + 7 >= linears.size())
                std::printf("%-14s %10.4f %10.4f %10.4f   (K=%ld)\n", linears[t].name.c_str(), ep, et, ek, static_cast<long>(kt));
            else if (t == 7)
                std::printf("%-14s\n", "...");
            const double nn = w.cast<double>().squaredNorm();
            se_p += ep * ep * nn;
            se_k += ek * ek * nn;
            se_t += et * et * nn;
            ss += nn;
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("%-14s %10.4f %10.4f %10.4f   (model-wide relative error; %.1f s)\n", "all", std::sqrt(se_p / ss),
                    std::sqrt(se_t / ss), std::sqrt(se_k / ss), secs);
    }

    // ---------------------------------------------------------------- Part 2: PSP rank 4
    std::printf("\n== Part 2: binarizer with and without PSP (rank 4, 10 iterations), S = identity ==\n");
    std::printf("%-14s %9s %9s %9s %9s %8s\n", "tensor", "sign", "sign+PSP", "arb", "arb+PSP", "+b/w");
    auto sign_q = [](const lowbit::cref_matrix_f& m) { return lowbit::binarize(m, lowbit::sign_scale{}).dequantize(); };
    auto arb_q = [](const lowbit::cref_matrix_f& m) { return lowbit::binarize(m, lowbit::arb{}).dequantize(); };
    double acc[4] = {0, 0, 0, 0}, ss = 0;
    for (const auto& l : all_linears) {
        const lowbit::matrix_f& w = *l.weight;
        const auto ps = lowbit::psp_refine(w, sign_q, 4, 10);
        const auto pa = lowbit::psp_refine(w, arb_q, 4, 10);
        const double e[4] = {lowbit::relative_error(w, sign_q(w)), lowbit::relative_error(w, ps.reconstruct()),
                             lowbit::relative_error(w, arb_q(w)), lowbit::relative_error(w, pa.reconstruct())};
        const double extra = 4.0 * static_cast<double>(w.rows() + w.cols()) * 16 / static_cast<double>(w.size());
        std::printf("%-14s %9.4f %9.4f %9.4f %9.4f %8.3f\n", l.name.c_str(), e[0], e[1], e[2], e[3], extra);
        const double nn = w.cast<double>().squaredNorm();
        for (int k = 0; k < 4; ++k) acc[k] += e[k] * e[k] * nn;
        ss += nn;
    }
    std::printf("%-14s %9.4f %9.4f %9.4f %9.4f\n", "all", std::sqrt(acc[0] / ss), std::sqrt(acc[1] / ss),
                std::sqrt(acc[2] / ss), std::sqrt(acc[3] / ss));
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
