// Example 01: quantize every linear weight of a real llama2.c checkpoint with the element quantizers
// and print the per-tensor relative error ‖W − Ŵ‖_F / ‖W‖_F:
//   rtn4     RTN int4, asymmetric, per row                       (rtn.hpp)
//   rtn4g32  RTN int4, asymmetric, per group of 32 (smaller tail) (rtn.hpp)
//   ternary  absmean symmetric ternary (BitNet b1.58), per row   (ternary.hpp)
//   e2m-atq  E2M-ATQ order 1, per row, S = I                      (asym_ternary.hpp)
//   e2m-atq2 E2M-ATQ order 2, per row, S = I                      (asym_ternary.hpp)
//   binary   ARB binarization (μ + α b), per row                  (binary.hpp)
//   mxfp4    OCP MXFP4, blocks of 32 (smaller tail)              (mxfp.hpp)
// No calibration activations are used in this first table (S = I).
//
// Second table — output error with a proxy calibration set (no model forward pass yet): for the
// tensors that read the residual stream (wq, wk, wv, w1, w3), X = the 512 token embeddings,
// RMS-normalised and scaled by the layer's norm weight (the true input of layer 0; a proxy for later
// layers). S = XᵀX. It prints sqrt(tr(ΔSΔᵀ) / tr(WSWᵀ)) for RTN-4, GPTQ(RTN-4) (gptq.hpp, H = 2S/N),
// E2M-ATQ with S = I, E2M-ATQ with stage 2 weighted by S, and GPTQ(E2M-ATQ).
//
// Usage: example_01_quantizers_real_checkpoint [checkpoint.bin]
// Default: <models>/stories260K/stories260K.bin, <models> = $LOWBIT_MODELS_DIR or ../shared/models.
#include <lowbit/asym_ternary.hpp>
#include <lowbit/binary.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/metrics.hpp>
#include <lowbit/mxfp.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/ternary.hpp>

#include "shared_models.hpp"

#include <array>
#include <cmath>
#include <string>
#include <cstdio>
#include <exception>

int main(int argc, char** argv) try {
    const std::filesystem::path path =
        argc > 1 ? std::filesystem::path(argv[1]) : lowbit_examples::model_file("stories260K", "stories260K.bin");
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

    std::printf("\nrelative output error sqrt(tr(dW S dW^T) / tr(W S W^T)), S = X^T X, X = normalised token embeddings\n\n");
    constexpr int k2 = 5;
    const char* names2[k2] = {"rtn4", "gptq-rtn4", "e2m-atq", "e2m-atq-S", "gptq-atq"};
    std::printf("%-14s %-8s", "tensor", "shape");
    for (const char* n : names2) std::printf(" %10s", n);
    std::printf("\n");
    std::array<double, k2> sum2{};
    int count2 = 0;
    const lowbit::matrix_f& emb = ck.token_embedding;
    for (std::size_t l = 0; l < ck.layers.size(); ++l) {
        const auto& layer = ck.layers[l];
        auto calib = [&](const lowbit::vector_f& norm) {
            lowbit::matrix_f x(emb.rows(), emb.cols());
            for (Eigen::Index t = 0; t < emb.rows(); ++t) {
                const float rms = std::sqrt(emb.row(t).squaredNorm() / static_cast<float>(emb.cols()) + 1e-5f);
                x.row(t) = emb.row(t).cwiseProduct(norm.transpose()) / rms;
            }
            return x;
        };
        const lowbit::matrix_f x_att = calib(layer.rms_att), x_ffn = calib(layer.rms_ffn);
        const std::pair<const char*, std::pair<const lowbit::matrix_f*, const lowbit::matrix_f*>> tensors[] = {
            {"wq", {&layer.wq, &x_att}}, {"wk", {&layer.wk, &x_att}}, {"wv", {&layer.wv, &x_att}},
            {"w1", {&layer.w1, &x_ffn}}, {"w3", {&layer.w3, &x_ffn}}};
        for (const auto& [kind, wx] : tensors) {
            const lowbit::matrix_f& w = *wx.first;
            const lowbit::matrix_d xd = wx.second->cast<double>();
            const lowbit::matrix_d s = xd.transpose() * xd;
            lowbit::gptq_hessian h(w.cols());
            h.add(*wx.second);
            const lowbit::matrix_f wh[k2] = {
                lowbit::quantize_rtn(w, {4}).dequantize(),
                lowbit::gptq_quantize(w, h.matrix(), lowbit::rtn_quantizer{4}).weights,
                lowbit::quantize_e2m_atq(w).dequantize(),
                lowbit::quantize_e2m_atq(w, lowbit::e2m_atq{}, lowbit::per_row{}, s).dequantize(),
                lowbit::gptq_quantize(w, h.matrix(), lowbit::e2m_atq_quantizer{}).weights};
            const double ref = lowbit::output_error(w, lowbit::matrix_f::Zero(w.rows(), w.cols()), s);
            const std::string name = "layers." + std::to_string(l) + "." + kind;
            char shape[32];
            std::snprintf(shape, sizeof shape, "%ldx%ld", static_cast<long>(w.rows()), static_cast<long>(w.cols()));
            std::printf("%-14s %-8s", name.c_str(), shape);
            for (int i = 0; i < k2; ++i) {
                const double e = std::sqrt(lowbit::output_error(w, wh[i], s) / ref);
                sum2[static_cast<std::size_t>(i)] += e;
                std::printf(" %10.4f", e);
            }
            std::printf("\n");
            ++count2;
        }
    }
    std::printf("%-14s %-8s", "mean", "");
    for (double s : sum2) std::printf(" %10.4f", s / count2);
    std::printf("\n");
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
