// lowbit-quantize: quantize a llama2.c checkpoint with lowbit recipes, write each quantized model as
// safetensors, and report recipe, effective bits per weight, perplexity, ratio to FP32 and decode
// tokens/s (Markdown table + SVG bar chart). Progress per layer goes to stderr.
//
//   lowbit-quantize [--model F] [--tokenizer F] [--text F] [--recipes a,b,...|all|default]
//                   [--eval-chars N] [--calib-windows N] [--decode-tokens N] [--repeats N]
//                   [--out DIR] [--speed-model] [--list]
//
// Defaults: the stories260K checkpoint, tokenizer and dev text under $LOWBIT_MODELS_DIR (or
// ../shared/models beside the checkout); evaluation on the first 60,000 characters; calibration on
// the text that follows them (never the evaluated text).
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/model/recipes.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct options {
    std::filesystem::path model, tokenizer, text, out = "lowbit-out";
    std::vector<std::string> recipes;
    std::size_t eval_chars = 60000;
    int calib_windows = 8;
    int decode_tokens = 200;
    int repeats = 3;
    bool speed_model = false;
};

const std::vector<std::string> default_recipes = {
    "fp32",         "rtn-w4",       "gptq-w4",      "absmean-w1.58",   "twla-w1.58",      "twla-w1.58a8",
    "twla-w1.58a4", "binary-w1",    "bwla-w1",      "bwla-w1a6",       "bwla-w1a6-psp",   "fp32-a4",
    "fp32-a4-hadamard", "mxfp4-w4a4", "mxfp4-w4a4-hadamard",
    // the papers' learned rotations, grouped TRA-GPTQ and NLI operators
    "twla-w1.58-kotms", "twla-w1.58a4-kotms", "twla-tra-kotms", "bwla-w1-okt", "bwla-w1a6-okt", "mxfp4-w4a4-torq",
    "fp32-nli", "twla-w1.58a8-kotms-nli"};

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string part; std::getline(ss, part, ',');)
        if (!part.empty()) out.push_back(part);
    return out;
}

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "error: %s\nusage: lowbit-quantize [--model F] [--tokenizer F] [--text F] [--recipes a,b|all|default]\n"
                 "       [--eval-chars N] [--calib-windows N] [--decode-tokens N] [--repeats N] [--out DIR]\n"
                 "       [--speed-model] [--list]\nrecipes: %s\n",
                 msg, lowbit::builtin_recipe_names().c_str());
    std::exit(2);
}

options parse(int argc, char** argv) {
    options o;
    std::string recipes = "default";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value after " + a).c_str());
            return argv[++i];
        };
        auto number = [&]() -> long {
            const std::string v = value();
            char* end = nullptr;
            const long n = std::strtol(v.c_str(), &end, 10);
            if (!end || *end || n < 0) usage(("not a non-negative integer: " + v).c_str());
            return n;
        };
        if (a == "--model") o.model = value();
        else if (a == "--tokenizer") o.tokenizer = value();
        else if (a == "--text") o.text = value();
        else if (a == "--recipes") recipes = value();
        else if (a == "--eval-chars") o.eval_chars = static_cast<std::size_t>(number());
        else if (a == "--calib-windows") o.calib_windows = static_cast<int>(number());
        else if (a == "--decode-tokens") o.decode_tokens = static_cast<int>(number());
        else if (a == "--repeats") o.repeats = std::max(1, static_cast<int>(number()));
        else if (a == "--out") o.out = value();
        else if (a == "--speed-model") o.speed_model = true;
        else if (a == "--list") {
            for (const auto& r : lowbit::builtin_recipes()) std::printf("%-22s %s\n", r.name.c_str(), r.description.c_str());
            std::exit(0);
        } else usage(("unknown argument " + a).c_str());
    }
    if (o.model.empty() || o.tokenizer.empty() || o.text.empty()) usage("--model, --tokenizer and --text are required");
    if (recipes == "all")
        for (const auto& r : lowbit::builtin_recipes()) o.recipes.push_back(r.name);
    else if (recipes == "default") o.recipes = default_recipes;
    else o.recipes = split(recipes);
    for (const auto& r : o.recipes) (void)lowbit::find_recipe(r); // unknown names fail before any work
    return o;
}

std::string read_text(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) throw lowbit::format_error("lowbit-quantize: cannot open text '" + p.string() + "'");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

/// Median decode speed (tokens/s): greedy one-token steps from BOS, `n` tokens, `repeats` runs.
double decode_tokens_per_second(const lowbit::llama_model& m, int n, int repeats) {
    n = std::min(n, m.config.seq_len - 1);
    std::vector<double> rates;
    for (int r = 0; r < repeats; ++r) {
        lowbit::kv_cache cache(m.config);
        int tok = 1;
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < n; ++i) {
            const int in[1] = {tok};
            const auto logits = lowbit::forward(m, cache, in, lowbit::logits_rows::last);
            tok = lowbit::argmax_row(logits, 0);
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        rates.push_back(n / s);
    }
    std::sort(rates.begin(), rates.end());
    return rates[rates.size() / 2];
}

struct row {
    std::string recipe, description;
    double bits = 0, ppl = 0, ratio = 0, tps = 0, speedup = 0;
};

void write_markdown(const std::filesystem::path& p, const std::vector<row>& rows, const std::string& title,
                    bool with_ppl) {
    std::ofstream f(p);
    f << "# " << title << "\n\n";
    if (with_ppl) {
        f << "| recipe | what | bits/weight | perplexity | ratio to FP32 | decode tok/s | speed vs FP32 |\n";
        f << "|---|---|---:|---:|---:|---:|---:|\n";
    } else {
        f << "| recipe | what | bits/weight | decode tok/s | speed vs FP32 |\n|---|---|---:|---:|---:|\n";
    }
    char buf[512];
    for (const auto& r : rows) {
        if (with_ppl)
            std::snprintf(buf, sizeof buf, "| %s | %s | %.2f | %.3f | %.3f | %.0f | %.2f |\n", r.recipe.c_str(),
                          r.description.c_str(), r.bits, r.ppl, r.ratio, r.tps, r.speedup);
        else
            std::snprintf(buf, sizeof buf, "| %s | %s | %.2f | %.1f | %.2f |\n", r.recipe.c_str(), r.description.c_str(),
                          r.bits, r.tps, r.speedup);
        f << buf;
    }
}

/// Horizontal bar chart of one column (log scale for perplexity ratios), plain SVG.
void write_svg(const std::filesystem::path& p, const std::vector<row>& rows, const std::string& title, bool ppl) {
    const int bar_h = 22, left = 190, width = 760, top = 40;
    const int h = top + static_cast<int>(rows.size()) * (bar_h + 6) + 30;
    double vmax = 0;
    for (const auto& r : rows) vmax = std::max(vmax, ppl ? std::log10(std::max(r.ppl, 1.0)) : r.speedup);
    if (vmax <= 0) vmax = 1;
    std::ofstream f(p);
    f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << left + width + 120 << "' height='" << h
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
    f << "<text x='10' y='22' font-size='15'>" << title << "</text>\n";
    int y = top;
    char buf[160];
    for (const auto& r : rows) {
        const double v = ppl ? std::log10(std::max(r.ppl, 1.0)) : r.speedup;
        const int w = static_cast<int>(width * v / vmax);
        f << "<text x='" << left - 6 << "' y='" << y + 15 << "' text-anchor='end'>" << r.recipe << "</text>\n";
        f << "<rect x='" << left << "' y='" << y << "' width='" << std::max(w, 1) << "' height='" << bar_h
          << "' fill='" << (r.recipe == "fp32" ? "#888" : "#3a7bd5") << "'/>\n";
        if (ppl) std::snprintf(buf, sizeof buf, "%.3f (%.2f b/w)", r.ppl, r.bits);
        else std::snprintf(buf, sizeof buf, "%.2fx (%.2f b/w)", r.speedup, r.bits);
        f << "<text x='" << left + std::max(w, 1) + 6 << "' y='" << y + 15 << "'>" << buf << "</text>\n";
        y += bar_h + 6;
    }
    f << "<text x='" << left << "' y='" << h - 8 << "' fill='#555'>"
      << (ppl ? "perplexity, log scale (lower is better)" : "decode speed relative to FP32 (higher is better)")
      << "</text>\n</svg>\n";
}

void print_table(const std::vector<row>& rows, bool with_ppl) {
    if (with_ppl)
        std::printf("%-20s %11s %11s %9s %12s %9s\n", "recipe", "bits/weight", "perplexity", "vs FP32", "decode tok/s",
                    "speed");
    else
        std::printf("%-20s %11s %12s %9s\n", "recipe", "bits/weight", "decode tok/s", "speed");
    for (const auto& r : rows) {
        if (with_ppl)
            std::printf("%-20s %11.2f %11.3f %9.3f %12.0f %8.2fx\n", r.recipe.c_str(), r.bits, r.ppl, r.ratio, r.tps,
                        r.speedup);
        else
            std::printf("%-20s %11.2f %12.1f %8.2fx\n", r.recipe.c_str(), r.bits, r.tps, r.speedup);
    }
}

} // namespace

int main(int argc, char** argv) try {
    const options o = parse(argc, argv);
    std::filesystem::create_directories(o.out);
    const auto ck = lowbit::io::read_llama2c(o.model);
    const auto tok = lowbit::io::read_tokenizer(o.tokenizer);
    const std::string text = read_text(o.text);
    const std::size_t eval_end = std::min(o.eval_chars, text.size());
    const auto eval_ids = tok.encode(std::string_view(text).substr(0, eval_end), false, false,
                                     lowbit::io::dummy_prefix::separate);
    const auto calib_ids = tok.encode(std::string_view(text).substr(eval_end), false, false,
                                      lowbit::io::dummy_prefix::separate);
    for (int id : eval_ids)
        if (id < 0 || id >= ck.config.vocab_size)
            throw lowbit::format_error("lowbit-quantize: the tokenizer produced id " + std::to_string(id) +
                                       " outside the model's vocabulary");
    const lowbit::llama_model fp32 = lowbit::model_from_llama2c(ck);
    std::fprintf(stderr, "model %s: dim %d, hidden %d, layers %d; eval %zu chars = %zu tokens; calib %zu tokens\n",
                 o.model.string().c_str(), ck.config.dim, ck.config.hidden_dim, ck.config.n_layers, eval_end,
                 eval_ids.size(), calib_ids.size());

    std::vector<row> rows;
    double fp32_ppl = 0, fp32_tps = 0;
    for (const auto& name : o.recipes) {
        const lowbit::recipe r = lowbit::find_recipe(name);
        lowbit::quantize_options qo;
        qo.calib_windows = o.calib_windows;
        qo.progress = [](const std::string& s) { std::fprintf(stderr, "  %s\n", s.c_str()); };
        std::fprintf(stderr, "[%s] %s\n", r.name.c_str(), r.description.c_str());
        lowbit::quantized_model q{r, {}, {}};
        q.model = lowbit::quantize_model(fp32, r, calib_ids, qo, &q.records);
        lowbit::save_quantized_model(o.out / (r.name + ".safetensors"), q);
        row x{r.name, r.description, q.model.bits_per_weight()};
        x.ppl = lowbit::perplexity(q.model, eval_ids).perplexity;
        x.tps = decode_tokens_per_second(q.model, o.decode_tokens, o.repeats);
        if (r.name == "fp32") {
            fp32_ppl = x.ppl;
            fp32_tps = x.tps;
        }
        if (fp32_ppl == 0) fp32_ppl = lowbit::perplexity(fp32, eval_ids).perplexity;
        if (fp32_tps == 0) fp32_tps = decode_tokens_per_second(fp32, o.decode_tokens, o.repeats);
        x.ratio = x.ppl / fp32_ppl;
        x.speedup = x.tps / fp32_tps;
        std::fprintf(stderr, "  -> %.2f bits/weight, perplexity %.3f, %.0f tok/s\n", x.bits, x.ppl, x.tps);
        rows.push_back(x);
    }
    std::printf("\nstories260K, perplexity on the first %zu characters (%zu tokens), decode %d tokens (median of %d)\n\n",
                eval_end, eval_ids.size(), o.decode_tokens, o.repeats);
    print_table(rows, true);
    write_markdown(o.out / "results.md", rows, "lowbit recipes on stories260K", true);
    write_svg(o.out / "results.svg", rows, "stories260K: perplexity per recipe", true);

    if (o.speed_model) {
        // Speed only: the same architecture at dim 2048, hidden 5632, 8 layers, random weights.
        lowbit::llama_config c;
        c.dim = 2048;
        c.hidden_dim = 5632;
        c.n_layers = 8;
        c.n_heads = 16;
        c.n_kv_heads = 8;
        c.vocab_size = 512;
        c.seq_len = 256;
        std::fprintf(stderr, "[speed model] dim %d, hidden %d, %d layers, random weights\n", c.dim, c.hidden_dim,
                     c.n_layers);
        const auto big = lowbit::random_llama(c, 1234);
        std::vector<row> srows;
        const int n = std::min(o.decode_tokens, 64);
        double base = 0;
        for (const char* name : {"fp32", "rtn-w4a8", "absmean-w1.58a8", "absmean-w1.58"}) {
            const auto r = lowbit::find_recipe(name);
            const auto m = lowbit::quantize_model(big, r, {});
            row x{r.name, r.description + " (random weights, speed only)", m.bits_per_weight()};
            x.tps = decode_tokens_per_second(m, n, o.repeats);
            if (base == 0) base = x.tps;
            x.speedup = x.tps / base;
            std::fprintf(stderr, "  %s: %.1f tok/s\n", name, x.tps);
            srows.push_back(x);
        }
        std::printf("\nspeed-only model (dim 2048, hidden 5632, 8 layers, random weights), decode %d tokens\n\n", n);
        print_table(srows, false);
        write_markdown(o.out / "speed.md", srows, "Decode speed, dim 2048 / hidden 5632 / 8 layers (random weights)",
                       false);
        write_svg(o.out / "speed.svg", srows, "dim-2048 model: decode speed vs FP32", false);
    }
    std::printf("\nwrote %s/results.md, results.svg%s and one .safetensors per recipe\n", o.out.string().c_str(),
                o.speed_model ? ", speed.md, speed.svg" : "");
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
