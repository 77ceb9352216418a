// Example 08: MoE quantization of the real qwen3moe-18M-en checkpoint (8 experts, top-2):
// plain RTN and GPTQ, GPTQ with AGQ expert Hessians, GPTQ on EBSS self-sampled calibration, and
// MoEQuant (EBSS + AGQ + GPTQ), at 4, 3 and 2 bits per weight (int4 container). Prints one
// markdown table row per model: stored bits/weight, nominal bits, dev perplexity (first windows of
// the models README protocol), router top-2 agreement with the float model, expert load balance,
// router logit RMSE, quantization time per layer. MoBiE rows (binary experts, model/mobie.hpp):
// `mobie` (CEJD + GLAS + NGES), the ablations `mobie-nocejd`, `mobie-noglas`, `mobie-nonges`, and
// `binary` (every component off: ARB + GPTQ per linear); they run once (1 bit), not per --bits.
// KBVQ-MoE rows (model/kbvq_moe.hpp, --bits 2 or 3 only): `kbvq` (IDRE + VQ residual + BCOS), the
// ablations `kbvq-noidre`, `kbvq-nobcos`, `kbvq-scalar` (scalar RTN residual at the same bits instead
// of VQ), `kbvq-idre-only` (IDRE, residual dropped) and `kbvq-vq-only` (VQ alone: IDRE and BCOS off).
//
// Usage: example_08_moe_quant [--bits 4,3,2] [--calib-windows 16] [--window 256] [--eval-windows 16]
//                             [--ebss-seq 16] [--ebss-beam 2] [--ebss-cand 4] [--ebss-tau 0.1]
//                             [--rows rtn,gptq,agq,ebss,moequant,mobie,mobie-nocejd,mobie-noglas,mobie-nonges,binary]
//                             [--cejd-rank 1.0] [--nges-rank 0.25] [--nges-eta 10] [--glas-kappa 1] [--save DIR]
//                             [--kbvq-rank 4] [--vq-iters 10]
// Calibration: text-en/calib.jsonl (first documents) or EBSS sequences of --window tokens;
// evaluation: text-en/dev.jsonl only.
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/model/checkpoint.hpp>
#include <lowbit/model/kbvq_moe.hpp>
#include <lowbit/model/mobie.hpp>
#include <lowbit/model/moe_recipes.hpp>

#include "shared_models.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string x; std::getline(ss, x, ',');) out.push_back(x);
    return out;
}

// Tokens of the first documents of a .jsonl file until at least `need` tokens.
std::vector<int> first_tokens(const lowbit::text_tokenizer& tok, const std::filesystem::path& file, std::size_t need) {
    const auto docs = lowbit::io::read_text_documents(file);
    std::vector<std::string> take;
    std::vector<int> ids;
    for (const auto& d : docs) {
        take.push_back(d);
        if (take.size() % 4 == 0 || &d == &docs.back()) {
            ids = tok.encode_documents(take);
            if (ids.size() >= need) break;
        }
    }
    return ids;
}

} // namespace

int main(int argc, char** argv) try {
    std::vector<int> bits_list = {4, 3, 2};
    int calib_windows = 16, window = 256, eval_windows = 16;
    lowbit::ebss_options eo;
    eo.sequences = 16;
    eo.beam = 2;
    eo.candidates = 4;
    eo.tau = 0.1;
    std::vector<std::string> rows = {"rtn", "gptq", "agq", "ebss", "moequant"};
    std::string save_dir;
    lowbit::mobie_config mobie_base;
    int kbvq_rank = 4, vq_iters = 10;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) throw std::runtime_error("missing value after " + a);
            return argv[++i];
        };
        if (a == "--bits") {
            bits_list.clear();
            for (const auto& b : split(next())) bits_list.push_back(std::stoi(b));
        } else if (a == "--calib-windows") calib_windows = std::stoi(next());
        else if (a == "--window") window = std::stoi(next());
        else if (a == "--eval-windows") eval_windows = std::stoi(next());
        else if (a == "--ebss-seq") eo.sequences = std::stoi(next());
        else if (a == "--ebss-beam") eo.beam = std::stoi(next());
        else if (a == "--ebss-cand") eo.candidates = std::stoi(next());
        else if (a == "--ebss-tau") eo.tau = std::stod(next());
        else if (a == "--rows") rows = split(next());
        else if (a == "--save") save_dir = next();
        else if (a == "--cejd-rank") mobie_base.cejd_rank = std::stod(next());
        else if (a == "--nges-rank") mobie_base.nges_rank = std::stod(next());
        else if (a == "--nges-eta") mobie_base.nges_eta = std::stod(next());
        else if (a == "--glas-kappa") mobie_base.glas_kappa = std::stod(next());
        else if (a == "--kbvq-rank") kbvq_rank = std::stoi(next());
        else if (a == "--vq-iters") vq_iters = std::stoi(next());
        else throw std::runtime_error("unknown argument " + a);
    }
    eo.length = window;
    const auto t_start = std::chrono::steady_clock::now();
    auto fp = lowbit::open_model(lowbit_examples::model_file("qwen3moe-18M-en"));
    const auto text = lowbit_examples::model_file("text-en");
    const auto calib = first_tokens(fp.tokenizer, text / "calib.jsonl", static_cast<std::size_t>(calib_windows * window));
    const auto dev = first_tokens(fp.tokenizer, text / "dev.jsonl", static_cast<std::size_t>(eval_windows * 512));
    std::printf("calibration text: %zu tokens (%d windows of %d used); dev: %zu tokens (%d windows of 512 scored)\n",
                calib.size(), calib_windows, window, dev.size(), eval_windows);
    lowbit::perplexity_options po;
    po.window = 512;
    po.max_windows = eval_windows;
    const double fp_ppl = lowbit::perplexity(fp.model, dev, po).perplexity;
    const auto fp_route = lowbit::compare_routing(fp.model, fp.model, dev, 512, eval_windows);
    std::vector<int> ebss_tokens;
    bool need_ebss = false;
    for (const auto& r : rows) need_ebss = need_ebss || r == "ebss" || r == "moequant";
    if (need_ebss) {
        const auto t0 = std::chrono::steady_clock::now();
        const auto seqs = lowbit::ebss_sample(fp.model, eo);
        for (const auto& s : seqs) ebss_tokens.insert(ebss_tokens.end(), s.begin(), s.end());
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("EBSS: %d sequences x %d tokens (beam %d, %d candidates, tau %g) in %.1f s\n", eo.sequences, eo.length,
                    eo.beam, eo.candidates, eo.tau, secs);
        std::printf("expert-usage sigma of the calibration set (mean over layers): EBSS %.4f, text %.4f\n",
                    lowbit::routing_balance_std(fp.model, ebss_tokens, window),
                    lowbit::routing_balance_std(fp.model, calib, window, calib_windows));
        std::printf("EBSS sample 0: %s\n", fp.tokenizer.decode(std::span<const int>(seqs[0].data(), std::min<std::size_t>(seqs[0].size(), 48))).c_str());
    }
    std::printf("\n| model | bits/weight stored | nominal | dev ppl (%d windows) | top-2 agreement | load sigma | router logit RMSE | s/layer |\n",
                eval_windows);
    std::printf("|---|---|---|---|---|---|---|---|\n");
    std::printf("| fp32 | 32.00 | 32.00 | %.3f | 1.000 | %.4f | 0 | - |\n", fp_ppl, fp_route.ref_balance_std);
    std::fflush(stdout);
    // MoBiE rows: binary, once.
    for (const auto& row : rows) {
        if (row != "binary" && row.rfind("mobie", 0) != 0) continue;
        lowbit::mobie_config c = mobie_base;
        c.calib_window = window;
        c.calib_windows = calib_windows;
        c.name = row == "binary" ? "binary-w1" : row;
        if (row == "binary") c.cejd = c.glas = c.nges = false;
        else if (row == "mobie-nocejd") c.cejd = false;
        else if (row == "mobie-noglas") c.glas = false;
        else if (row == "mobie-nonges") c.nges = false;
        else if (row != "mobie") throw std::runtime_error("unknown row " + row);
        const auto r = lowbit::quantize_mobie(fp.model, calib, c);
        const double ppl = lowbit::perplexity(r.q.model, dev, po).perplexity;
        const auto cmp = lowbit::compare_routing(fp.model, r.q.model, dev, 512, eval_windows);
        double secs = r.gradient_seconds, ns = 0;
        for (double s : r.layer_seconds) secs += s;
        for (double v : r.null_space_error) ns += v;
        std::printf("| %s | %.3f (experts %.3f) | 1 | %.3f | %.3f | %.4f | %.3f | %.2f |\n", c.name.c_str(), r.bits_per_weight,
                    r.expert_bits_per_weight, ppl, cmp.agreement, cmp.balance_std, cmp.logit_rmse,
                    secs / static_cast<double>(r.layer_seconds.size()));
        std::printf("  (%s: GLAS reverse pass %.1f s; mean null-space error sqrt(sum|dW Q_k|^2/sum|W Q_k|^2) %.4f)\n",
                    c.name.c_str(), r.gradient_seconds, ns / static_cast<double>(r.null_space_error.size()));
        std::fflush(stdout);
        if (!save_dir.empty()) lowbit::save_quantized_model(std::filesystem::path(save_dir) / (c.name + ".safetensors"), r.q);
    }
    for (int bits : bits_list)
        for (const auto& row : rows) {
            if (row == "binary" || row.rfind("mobie", 0) == 0) continue;
            if (row.rfind("kbvq", 0) == 0) {
                if (bits != 2 && bits != 3) continue;
                lowbit::kbvq_config c = lowbit::kbvq_preset(bits);
                c.idre_rank = kbvq_rank;
                c.vq_iterations = vq_iters;
                c.calib_window = window;
                c.calib_windows = calib_windows;
                c.name = row + "-w" + std::to_string(bits);
                if (row == "kbvq-noidre") c.idre = false;
                else if (row == "kbvq-nobcos") c.bcos = false;
                else if (row == "kbvq-scalar") c.residual = lowbit::kbvq_residual::scalar;
                else if (row == "kbvq-idre-only") c.residual = lowbit::kbvq_residual::none;
                else if (row == "kbvq-vq-only") c.idre = c.bcos = false;
                else if (row != "kbvq") throw std::runtime_error("unknown row " + row);
                const auto r = lowbit::quantize_kbvq_moe(fp.model, calib, c);
                const double ppl = lowbit::perplexity(r.q.model, dev, po).perplexity;
                const auto cmp = lowbit::compare_routing(fp.model, r.q.model, dev, 512, eval_windows);
                double secs = 0, oe = 0;
                for (double s : r.layer_seconds) secs += s;
                for (double v : r.expert_output_error) oe += v;
                std::printf("| %s | %.3f (experts %.3f) | - | %.3f | %.3f | %.4f | %.3f | %.2f |\n", c.name.c_str(), r.bits_per_weight,
                            r.expert_bits_per_weight, ppl, cmp.agreement, cmp.balance_std, cmp.logit_rmse,
                            secs / static_cast<double>(r.layer_seconds.size()));
                std::printf("  (%s: mean expert output error sum|X(W - W^)'|^2/sum|XW'|^2 %.5f)\n", c.name.c_str(),
                            oe / static_cast<double>(r.expert_output_error.size()));
                std::fflush(stdout);
                if (!save_dir.empty()) lowbit::save_quantized_model(std::filesystem::path(save_dir) / (c.name + ".safetensors"), r.q);
                continue;
            }
            lowbit::moe_quant_config c;
            c.bits = bits;
            c.calib_window = window;
            c.calib_windows = calib_windows;
            c.gptq = row != "rtn";
            c.agq = row == "agq" || row == "moequant";
            c.name = row + "-w" + std::to_string(bits);
            const bool use_ebss = row == "ebss" || row == "moequant";
            const auto r = lowbit::quantize_moe(fp.model, use_ebss ? std::span<const int>(ebss_tokens) : std::span<const int>(calib), c);
            const double ppl = lowbit::perplexity(r.q.model, dev, po).perplexity;
            const auto cmp = lowbit::compare_routing(fp.model, r.q.model, dev, 512, eval_windows);
            double secs = 0;
            for (double s : r.layer_seconds) secs += s;
            std::printf("| %s | %.3f | %.3f | %.3f | %.3f | %.4f | %.3f | %.2f |\n", c.name.c_str(), r.bits_per_weight,
                        r.nominal_bits, ppl, cmp.agreement, cmp.balance_std, cmp.logit_rmse,
                        secs / static_cast<double>(r.layer_seconds.size()));
            std::fflush(stdout);
            if (!save_dir.empty()) lowbit::save_quantized_model(std::filesystem::path(save_dir) / (c.name + ".safetensors"), r.q);
        }
    std::printf("total %.0f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
