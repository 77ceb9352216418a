// RWKVQuant on the real RWKV-4 checkpoint (rwkv4-25M-en): quantize every time-mix and channel-mix
// weight matrix with one recipe, print what the proxy chose per matrix and the dev perplexity.
//
//   example_07_rwkv_quant METHOD [EVAL_WINDOWS] [TAU_COARSE] [TAU_FINE] [CALIB_WINDOWS] [THREADS]
//     METHOD: fp | rtn | gptq | vq | vq-noprod | rwkvquant   (defaults: 100 windows, τ 1.9 / 1.5e5, 16, 2)
//
// Calibration: the first CALIB_WINDOWS 512-token windows of text-en/calib.jsonl; evaluation: the first
// EVAL_WINDOWS windows (−1: all) of text-en/dev.jsonl under the models README protocol.
#include <lowbit/io/bpe_tokenizer.hpp>
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/model/rwkv_quant.hpp>

#include "shared_models.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) try {
    using namespace lowbit;
    const std::string method = argc > 1 ? argv[1] : "rwkvquant";
    const int eval_windows = argc > 2 ? std::atoi(argv[2]) : 100;
    const double tau_c = argc > 3 ? std::atof(argv[3]) : 1.9, tau_f = argc > 4 ? std::atof(argv[4]) : 1.5e5;
    const int calib_windows = argc > 5 ? std::atoi(argv[5]) : 16;
    const int threads = argc > 6 ? std::atoi(argv[6]) : 2;
    const auto m = load_rwkv_model(lowbit_examples::model_file("rwkv4-25M-en"));
    const auto tok = io::bpe_tokenizer::load(lowbit_examples::model_file("rwkv4-25M-en", "tokenizer.json"));
    const auto calib = io::document_stream(tok, io::read_text_documents(lowbit_examples::model_file("text-en", "calib.jsonl")), 0);
    const auto dev = io::document_stream(tok, io::read_text_documents(lowbit_examples::model_file("text-en", "dev.jsonl")), 0);
    perplexity_options po;
    po.threads = threads;
    po.max_windows = eval_windows;
    const auto t0 = std::chrono::steady_clock::now();
    auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    if (method == "fp") {
        const auto r = perplexity(m, dev, po);
        std::printf("fp32 bits 32 ppl %.4f scored %lld eval %.1fs\n", r.perplexity, r.scored, secs(t0, std::chrono::steady_clock::now()));
        return 0;
    }
    rwkv_quant_options o;
    o.method = method == "rtn" ? rwkv_quant_method::rtn
             : method == "gptq" ? rwkv_quant_method::gptq
             : (method == "vq" || method == "vq-noprod") ? rwkv_quant_method::vq
             : rwkv_quant_method::rwkvquant;
    o.product_weighted_codebooks = method != "vq-noprod";
    o.tau_coarse = tau_c;
    o.tau_fine = tau_f;
    o.calib_windows = calib_windows;
    const auto res = rwkv_quantize(m, calib, o);
    const auto t1 = std::chrono::steady_clock::now();
    for (const auto& r : res.records)
        std::printf("L%d %-24s Pc %.4f Pf %.4g %s bits %.3f loss %.4g%s\n", r.layer, rwkv_slot_name(r.slot), r.proxy.coarse,
                    r.proxy.fine, r.family == quantization_family::vector ? "VQ" : "SQ", r.bits_per_weight, r.loss,
                    r.product_weighted ? " prod" : "");
    const auto r = perplexity(res.model, dev, po);
    std::printf("%s bits %.4f ppl %.4f scored %lld quant %.1fs eval %.1fs\n", method.c_str(), res.model.bits_per_weight(),
                r.perplexity, r.scored, secs(t0, t1), secs(t1, std::chrono::steady_clock::now()));
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
