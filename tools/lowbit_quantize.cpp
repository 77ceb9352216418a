// lowbit-quantize: quantize, evaluate, run and inspect models with lowbit's recipes.
//
//   lowbit-quantize quantize   MODEL -o OUT.safetensors|OUT.gguf --recipe NAME [--set k=v,...] [--calib FILE] ...
//   lowbit-quantize perplexity MODEL [-f TEXT] [--max-windows N] [--window N] [-t THREADS]
//   lowbit-quantize generate   MODEL [-p PROMPT] [-n N] [--temp T] [--top-k K] [--top-p P] [--seed S]
//   lowbit-quantize inspect    MODEL
//   lowbit-quantize recipes
//   lowbit-quantize compare    MODEL --text FILE [--calib FILE] [--recipes a,b|all|default] ...
//
// MODEL is a Hugging Face checkpoint folder, a llama2.c checkpoint (.bin; tokenizer beside it or
// --tokenizer), a lowbit quantized model (.safetensors, which carries its tokenizer) or a GGUF file
// (.gguf: llama, qwen3, qwen3moe; dequantized to FP32). Results go to stdout, progress to stderr. `lowbit-quantize COMMAND --help` describes each command.
#include <lowbit/io/detail/atomic_file.hpp>
#include <lowbit/io/gguf.hpp>
#include <lowbit/io/gguf_quants.hpp>
#include <lowbit/model/checkpoint.hpp>
#include <lowbit/model/gguf_model.hpp>
#include <lowbit/model/kbvq_moe.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/model/mobie.hpp>
#include <lowbit/model/moe_recipes.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/version.hpp>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

// ------------------------------------------------------------------------------------------------
// Command-line parsing: a command, one positional MODEL, and --options (short aliases as llama.cpp's tools).
// ------------------------------------------------------------------------------------------------

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct option_spec {
    const char* name;  // long name without "--"
    const char* alias; // short alias ("-o") or nullptr
    bool takes_value;
    const char* help;
};

struct command_spec {
    const char* name;
    const char* synopsis;
    const char* summary;
    std::vector<option_spec> options;
};

struct parsed_args {
    std::vector<std::string> positional;
    std::map<std::string, std::string> values; // long name → value ("" for flags)
    [[nodiscard]] bool has(const std::string& k) const { return values.count(k) != 0; }
    [[nodiscard]] std::string get(const std::string& k, const std::string& fallback = "") const {
        auto it = values.find(k);
        return it == values.end() ? fallback : it->second;
    }
    [[nodiscard]] long long integer(const std::string& k, long long fallback, long long lo, long long hi) const {
        if (!has(k)) return fallback;
        const std::string v = get(k);
        char* end = nullptr;
        const long long x = std::strtoll(v.c_str(), &end, 10);
        if (v.empty() || !end || *end || x < lo || x > hi)
            throw usage_error("--" + k + " takes an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + v + "'");
        return x;
    }
    [[nodiscard]] double real(const std::string& k, double fallback, double lo, double hi) const {
        if (!has(k)) return fallback;
        const std::string v = get(k);
        char* end = nullptr;
        const double x = std::strtod(v.c_str(), &end);
        if (v.empty() || !end || *end || !(x >= lo && x <= hi))
            throw usage_error("--" + k + " takes a number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + v + "'");
        return x;
    }
};

const option_spec opt_tokenizer{"tokenizer", nullptr, true, "tokenizer file (tokenizer.json or llama2.c tokenizer.bin) instead of the model's own"};
const option_spec opt_threads{"threads", "-t", true, "threads for perplexity windows (default 1; results do not depend on it)"};
const option_spec opt_help{"help", "-h", false, "this help"};

std::vector<command_spec> commands() {
    return {
        {"quantize", "quantize MODEL -o OUT.safetensors|OUT.gguf --recipe NAME [options]",
         "Quantizes every block linear of MODEL with a recipe and writes a lowbit model (.safetensors, tokenizer "
         "included) or a GGUF that llama.cpp runs (.gguf; recipes whose codes GGUF cannot express are refused "
         "before any work, saying why).",
         {{"output", "-o", true, "output file (.safetensors or .gguf); written atomically"},
          {"recipe", "-r", true, "recipe name (see `lowbit-quantize recipes`): a built-in recipe, or a Mixture-of-Experts "
                                  "pipeline (moequant-w4|w3|w2, mobie-w1, kbvq-w2|w3) for routed-expert models"},
          {"set", nullptr, true, "override recipe fields: key=value,key=value (seed=3,hadamard_first=false,...)"},
          {"calib", nullptr, true, "calibration text (.txt or .jsonl); required by calibrated recipes; never the evaluation text"},
          {"calib-windows", nullptr, true, "calibration windows used (default 8)"},
          {"calib-window", nullptr, true, "calibration window length in tokens (default: the perplexity window)"},
          {"outtype", nullptr, true, "GGUF only: type of float weights (block linears of fp32 recipes, the embedding): "
                                     "f32, f16 (default), bf16, q8_0, q4_0, q4_1, q5_0, q5_1, tq1_0, tq2_0, mxfp4"},
          {"ternary-type", nullptr, true, "GGUF only: type of ternary/binary codes: tq2_0 (default, 2.06 bits) or tq1_0 (1.69 bits)"},
          {"weights-only", nullptr, false, "GGUF only: export the weights even when the recipe's activation quantization "
                                           "or NLI operators cannot be expressed (llama.cpp then runs float activations)"},
          opt_tokenizer, opt_help}},
        {"perplexity", "perplexity MODEL [-f TEXT] [options]",
         "Perplexity under the models README protocol (Hugging Face models: documents joined by EOS, windows of 512 "
         "from 0 without BOS; llama2.c models: windows of seq_len-1 with BOS prepended).",
         {{"text", "-f", true, "evaluation text (.txt or .jsonl)"},
          {"max-windows", nullptr, true, "evaluate at most this many windows (default: all)"},
          {"window", nullptr, true, "window length in tokens (default 512, llama2.c: seq_len-1)"},
          opt_threads, opt_tokenizer, opt_help}},
        {"generate", "generate MODEL [-p PROMPT] [options]",
         "Generates text from a prompt: greedy (--temp 0, the default) or sampled with a seed.",
         {{"prompt", "-p", true, "prompt text (default: empty; llama2.c models start from BOS)"},
          {"n-predict", "-n", true, "tokens to generate (default 64)"},
          {"temp", nullptr, true, "temperature (default 0: greedy)"},
          {"top-k", nullptr, true, "sample from the k most likely tokens (default 0: all)"},
          {"top-p", nullptr, true, "nucleus sampling mass (default 1)"},
          {"seed", "-s", true, "sampling seed (default 0)"},
          opt_tokenizer, opt_help}},
        {"inspect", "inspect MODEL", "Prints the architecture, the tensors of every block, bits per weight and the recipe with every field "
                                     "(GGUF files: also the metadata and every tensor's stored type).",
         {opt_tokenizer, opt_help}},
        {"recipes", "recipes", "Lists the built-in recipes with their fields.", {opt_help}},
        {"compare", "compare MODEL --text FILE [options]",
         "Quantizes MODEL with several recipes and prints bits/weight, perplexity, ratio to FP32 and decode speed "
         "(Markdown table and SVG chart in --out).",
         {{"text", "-f", true, "evaluation text (.txt or .jsonl)"},
          {"calib", nullptr, true, "calibration text; default: the text after --eval-chars of --text"},
          {"recipes", nullptr, true, "a,b,... | all | default"},
          {"eval-chars", nullptr, true, "evaluate on the first N characters of a .txt --text (default 60000; calibrate on the rest)"},
          {"max-windows", nullptr, true, "evaluate at most this many windows"},
          {"calib-windows", nullptr, true, "calibration windows used (default 8)"},
          {"decode-tokens", nullptr, true, "tokens per decode-speed run (default 200)"},
          {"repeats", nullptr, true, "decode-speed runs, median reported (default 3)"},
          {"out", nullptr, true, "folder for results.md, results.svg and one .safetensors per recipe (default lowbit-out)"},
          {"speed-model", nullptr, false, "also measure decode speed on a dim-2048 random-weight model"},
          opt_threads, opt_tokenizer, opt_help}},
    };
}

void print_help(const command_spec& c) {
    std::printf("usage: lowbit-quantize %s\n\n%s\n\noptions:\n", c.synopsis, c.summary);
    for (const auto& o : c.options) {
        std::string flag = std::string("--") + o.name + (o.takes_value ? " V" : "");
        if (o.alias) flag = std::string(o.alias) + ", " + flag;
        std::printf("  %-24s %s\n", flag.c_str(), o.help);
    }
}

void print_main_help() {
    std::printf("lowbit-quantize %d.%d.%d: low-bit quantization of Llama-family models with lowbit's recipes\n\n"
                "usage: lowbit-quantize COMMAND [MODEL] [options]\n\ncommands:\n",
                LOWBIT_VERSION_MAJOR, LOWBIT_VERSION_MINOR, LOWBIT_VERSION_PATCH);
    for (const auto& c : commands()) std::printf("  %-11s %s\n", c.name, c.summary);
    std::printf("\nMODEL (positional, or -m MODEL): a Hugging Face checkpoint folder, a llama2.c .bin checkpoint, or a lowbit\n"
                ".safetensors model.\n"
                "`lowbit-quantize COMMAND --help` for the options of a command.\n");
}

parsed_args parse_args(const command_spec& c, int argc, char** argv, int first) {
    parsed_args a;
    for (int i = first; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-m" || arg == "--model" || arg == "--in") { // llama.cpp's spelling of the model argument
            if (i + 1 >= argc) throw usage_error("option '" + arg + "' needs a value");
            a.positional.push_back(argv[++i]);
            continue;
        }
        if (arg.size() > 1 && arg[0] == '-') {
            const option_spec* spec = nullptr;
            std::string value;
            bool inline_value = false;
            std::string key = arg;
            if (arg.rfind("--", 0) == 0) {
                const auto eq = arg.find('=');
                if (eq != std::string::npos) {
                    key = arg.substr(0, eq);
                    value = arg.substr(eq + 1);
                    inline_value = true;
                }
            }
            for (const auto& o : c.options)
                if (key == std::string("--") + o.name || (o.alias && key == o.alias)) spec = &o;
            if (!spec) throw usage_error("unknown option '" + arg + "' for '" + c.name + "' (see lowbit-quantize " + c.name + " --help)");
            if (spec->takes_value && !inline_value) {
                if (i + 1 >= argc) throw usage_error("option '" + arg + "' needs a value");
                value = argv[++i];
            } else if (!spec->takes_value && inline_value) {
                throw usage_error("option '" + key + "' takes no value");
            }
            if (a.values.count(spec->name)) throw usage_error("option --" + std::string(spec->name) + " given twice");
            a.values[spec->name] = value;
        } else {
            a.positional.push_back(arg);
        }
    }
    return a;
}

void progress_line(const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); }

std::function<void(int, int)> window_progress(const char* what) {
    auto start = std::make_shared<clock_type::time_point>(clock_type::now());
    auto last = std::make_shared<int>(-1);
    return [=](int done, int total) {
        const int pct = total ? done * 100 / total : 100;
        if (pct == *last && done != total) return;
        *last = pct;
        const double s = std::chrono::duration<double>(clock_type::now() - *start).count();
        const double eta = done ? s / done * (total - done) : 0.0;
        std::fprintf(stderr, "\r%s: window %d/%d (%d%%), %.0f s elapsed, ~%.0f s left   ", what, done, total, pct, s, eta);
        if (done == total) std::fprintf(stderr, "\n");
    };
}

lowbit::opened_model open_for(const parsed_args& a, const char* command) {
    if (a.positional.size() != 1)
        throw usage_error(std::string(command) + " takes exactly one MODEL argument (got " + std::to_string(a.positional.size()) + ")");
    const auto t0 = clock_type::now();
    auto m = lowbit::open_model(a.positional[0], a.get("tokenizer"));
    std::fprintf(stderr, "loaded %s model '%s' (%s, %d layers, width %d, vocab %d) in %.2f s\n", m.kind.c_str(),
                 a.positional[0].c_str(), m.model.architecture.c_str(), m.model.config.n_layers, m.model.config.dim,
                 m.model.config.vocab_size, std::chrono::duration<double>(clock_type::now() - t0).count());
    return m;
}

const lowbit::text_tokenizer& need_tokenizer(const lowbit::opened_model& m) {
    if (m.tokenizer.empty())
        throw lowbit::invalid_argument("lowbit-quantize: the model has no tokenizer; pass --tokenizer FILE");
    return m.tokenizer;
}

std::vector<int> encode_file(const lowbit::text_tokenizer& tok, const fs::path& p, int vocab) {
    const auto docs = lowbit::io::read_text_documents(p);
    const auto ids = tok.encode_documents(docs);
    for (int id : ids)
        if (id < 0 || id >= vocab)
            throw lowbit::format_error("lowbit-quantize: the tokenizer produced id " + std::to_string(id) + " outside the model's vocabulary");
    std::fprintf(stderr, "text '%s': %zu documents, %zu tokens\n", p.string().c_str(), docs.size(), ids.size());
    return ids;
}

// --- the Mixture-of-Experts pipelines: recipes that need the routing (MoEQuant, MoBiE, KBVQ-MoE) ---

/// One MoE pipeline under its recipe name: quantizes a routed-expert model from calibration tokens
/// (window, windows: as --calib-window / --calib-windows; progress: one line per block).
struct moe_pipeline {
    std::string name;
    std::string description;
    std::function<lowbit::quantized_model(const lowbit::llama_model&, std::span<const int>, int, int,
                                          const std::function<void(const std::string&)>&)>
        run;
};

/// A pipeline running `quantize(model, calib, config)` with `c` plus the command line's calibration
/// window, window count and progress.
template <class Config, class Quantize>
moe_pipeline make_moe_pipeline(const Config& c, std::string description, Quantize quantize) {
    return {c.name, std::move(description),
            [c, quantize](const lowbit::llama_model& m, std::span<const int> calib, int window, int windows,
                          const std::function<void(const std::string&)>& progress) {
                Config run = c;
                run.calib_window = window;
                run.calib_windows = windows;
                run.progress = progress;
                return quantize(m, calib, run).q;
            }};
}

std::vector<moe_pipeline> moe_pipelines() {
    std::vector<moe_pipeline> out;
    for (int bits : {4, 3, 2}) {
        lowbit::moe_quant_config c;
        c.name = "moequant-w" + std::to_string(bits);
        c.bits = bits;
        out.push_back(make_moe_pipeline(c, lowbit::moe_recipe(c).description,
                                        [](const auto& m, auto calib, const auto& k) { return lowbit::quantize_moe(m, calib, k); }));
    }
    const lowbit::mobie_config mobie;
    out.push_back(make_moe_pipeline(mobie, lowbit::mobie_recipe(mobie).description,
                                    [](const auto& m, auto calib, const auto& k) { return lowbit::quantize_mobie(m, calib, k); }));
    for (int bits : {2, 3}) {
        const lowbit::kbvq_config c = lowbit::kbvq_preset(bits);
        out.push_back(make_moe_pipeline(c, lowbit::kbvq_recipe(c).description,
                                        [](const auto& m, auto calib, const auto& k) { return lowbit::quantize_kbvq_moe(m, calib, k); }));
    }
    return out;
}

const moe_pipeline* find_moe_pipeline(const std::vector<moe_pipeline>& all, const std::string& name) {
    for (const auto& p : all)
        if (p.name == name) return &p;
    return nullptr;
}

lowbit::recipe recipe_from(const parsed_args& a) {
    if (!a.has("recipe")) throw usage_error("--recipe NAME is required (see `lowbit-quantize recipes`)");
    lowbit::recipe r = lowbit::find_recipe(a.get("recipe"));
    if (a.has("set")) lowbit::set_recipe_fields(r, a.get("set"), ',');
    return r;
}

// ------------------------------------------------------------------------------------------------
// Commands
// ------------------------------------------------------------------------------------------------

/// Writes a quantized model as lowbit .safetensors or (to_gguf) a GGUF; prints what it wrote.
void write_quantized(const lowbit::quantized_model& q, const lowbit::text_tokenizer& tok, const fs::path& out, bool to_gguf,
                     const lowbit::gguf_export_options& eo, clock_type::time_point t0) {
    if (to_gguf) {
        const auto g = lowbit::make_gguf(q.model, tok, eo, &q.records, &q.spec);
        g.write(out);
        std::printf("wrote %s: recipe %s, GGUF with %zu tensors, %.1f MB of tensor data (%.1f s)\n", out.string().c_str(), q.spec.name.c_str(),
                    g.tensor_count(), static_cast<double>(g.tensor_bytes()) / 1e6,
                    std::chrono::duration<double>(clock_type::now() - t0).count());
        return;
    }
    lowbit::save_quantized_model(out, q);
    std::printf("wrote %s: recipe %s, %.3f bits/weight over %zu block linears (%.1f s)\n", out.string().c_str(), q.spec.name.c_str(),
                q.model.bits_per_weight(), q.records.size(), std::chrono::duration<double>(clock_type::now() - t0).count());
}

/// `quantize` with a MoE pipeline: MODEL must have routed experts; calibration is required.
int quantize_moe_pipeline(const parsed_args& a, const moe_pipeline& p, const fs::path& out, bool to_gguf,
                          lowbit::gguf_export_options eo) {
    auto src = open_for(a, "quantize");
    if (src.kind == "lowbit") throw usage_error("MODEL is already a lowbit quantized model; quantize its float source");
    if (src.model.config.n_experts <= 0)
        throw usage_error("recipe '" + p.name + "' quantizes Mixture-of-Experts models (routed experts, e.g. qwen3moe); MODEL has none");
    if (!a.has("calib")) throw usage_error("recipe '" + p.name + "' is calibrated: pass --calib FILE (.txt or .jsonl)");
    if (to_gguf) {
        eo.name = fs::path(a.positional[0]).filename().string();
        (void)lowbit::gguf_architecture(src.model);
    }
    const auto calib = encode_file(need_tokenizer(src), a.get("calib"), src.model.config.vocab_size);
    const int windows = static_cast<int>(a.integer("calib-windows", 8, 1, 1 << 20));
    const int window = static_cast<int>(a.integer("calib-window", -1, 1, 1 << 20));
    const auto t0 = clock_type::now();
    const int layers = src.model.config.n_layers;
    int done = 0;
    const auto progress = [&](const std::string& s) {
        ++done;
        std::fprintf(stderr, "[%d/%d %.0f s] %s\n", done, layers, std::chrono::duration<double>(clock_type::now() - t0).count(), s.c_str());
    };
    std::fprintf(stderr, "recipe %s: %s\n", p.name.c_str(), p.description.c_str());
    lowbit::quantized_model q = p.run(src.model, calib, window, windows, progress);
    q.tokenizer_format = src.tokenizer.format();
    q.tokenizer_bytes = src.tokenizer.bytes();
    write_quantized(q, src.tokenizer, out, to_gguf, eo, t0);
    return 0;
}

int cmd_quantize(const parsed_args& a) {
    if (!a.has("output")) throw usage_error("-o/--output OUT.safetensors|OUT.gguf is required");
    const fs::path out = a.get("output");
    const bool to_gguf = out.extension() == ".gguf";
    if (!to_gguf && out.extension() != ".safetensors") throw usage_error("the output must end in .safetensors or .gguf");
    for (const char* k : {"outtype", "ternary-type", "weights-only"})
        if (!to_gguf && a.has(k)) throw usage_error(std::string("--") + k + " applies to GGUF output (-o OUT.gguf) only");
    lowbit::gguf_export_options eo;
    if (a.has("outtype")) eo.weight_type = eo.embedding_type = lowbit::io::ggml_type_from_name(a.get("outtype"));
    if (a.has("ternary-type")) {
        eo.ternary_type = lowbit::io::ggml_type_from_name(a.get("ternary-type"));
        if (eo.ternary_type != lowbit::io::ggml_type::tq1_0 && eo.ternary_type != lowbit::io::ggml_type::tq2_0)
            throw usage_error("--ternary-type takes tq1_0 or tq2_0");
    }
    eo.weights_only = a.has("weights-only");
    const auto pipelines = moe_pipelines();
    const moe_pipeline* moe = a.has("recipe") ? find_moe_pipeline(pipelines, a.get("recipe")) : nullptr;
    if (moe && a.has("set")) throw usage_error("--set applies to the built-in recipes; '" + moe->name + "' takes no field overrides");
    if (moe) return quantize_moe_pipeline(a, *moe, out, to_gguf, eo);
    const lowbit::recipe r = recipe_from(a);
    auto src = open_for(a, "quantize");
    if (to_gguf) {
        // refuse what GGUF cannot express before quantizing (minutes of work): the recipe's online
        // rotation / activation policy and the architecture are checked on an empty record set
        eo.name = fs::path(a.positional[0]).filename().string();
        (void)lowbit::gguf_architecture(src.model);
        lowbit::gguf_check_recipe(r, eo);
    }
    if (src.kind == "lowbit") throw usage_error("MODEL is already a lowbit quantized model; quantize its float source");
    std::vector<int> calib;
    if (r.needs_calibration()) {
        if (!a.has("calib")) throw usage_error("recipe '" + r.name + "' is calibrated: pass --calib FILE (.txt or .jsonl)");
        calib = encode_file(need_tokenizer(src), a.get("calib"), src.model.config.vocab_size);
    } else if (a.has("calib")) {
        std::fprintf(stderr, "note: recipe '%s' needs no calibration; --calib is ignored\n", r.name.c_str());
    }
    lowbit::quantize_options qo;
    qo.calib_windows = static_cast<int>(a.integer("calib-windows", 8, 1, 1 << 20));
    qo.calib_window = static_cast<int>(a.integer("calib-window", -1, 1, 1 << 20));
    const auto ids_total = [&] {
        std::size_t n = 0;
        for (int l = 0; l < src.model.config.n_layers; ++l) n += src.model.block_linears(l).size();
        return n;
    }();
    std::size_t done = 0;
    const auto t0 = clock_type::now();
    qo.progress = [&](const std::string& s) {
        if (s.starts_with("ila-amp") || s.starts_with("scale tuning")) { // ILA-AMP and scale tuning lines: not a layer
            std::fprintf(stderr, "[%.0f s] %s\n", std::chrono::duration<double>(clock_type::now() - t0).count(), s.c_str());
            return;
        }
        ++done;
        std::fprintf(stderr, "[%zu/%zu %.0f s] %s\n", done, ids_total, std::chrono::duration<double>(clock_type::now() - t0).count(),
                     s.c_str());
    };
    std::fprintf(stderr, "recipe %s: %s\n  fields: %s\n", r.name.c_str(), r.description.c_str(), lowbit::recipe_fields(r).c_str());
    lowbit::quantized_model q{r, {}, {}, src.tokenizer.format(), src.tokenizer.bytes()};
    q.model = lowbit::quantize_model(src.model, r, calib, qo, &q.records);
    write_quantized(q, src.tokenizer, out, to_gguf, eo, t0);
    return 0;
}

int cmd_perplexity(const parsed_args& a) {
    if (!a.has("text")) throw usage_error("-f/--text FILE is required");
    auto m = open_for(a, "perplexity");
    const auto ids = encode_file(need_tokenizer(m), a.get("text"), m.model.config.vocab_size);
    lowbit::perplexity_options o;
    o.max_windows = static_cast<int>(a.integer("max-windows", -1, 1, 1 << 30));
    o.window = static_cast<int>(a.integer("window", -1, 1, 1 << 24));
    o.threads = static_cast<int>(a.integer("threads", 1, 1, 256));
    o.progress = window_progress("perplexity");
    const auto t0 = clock_type::now();
    const auto r = lowbit::perplexity(m.model, ids, o);
    const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
    std::printf("model      %s (%s%s)\n", a.positional[0].c_str(), m.model.architecture.c_str(),
                m.quantized ? (", recipe " + m.quantized->spec.name).c_str() : "");
    std::printf("text       %s\n", a.get("text").c_str());
    std::printf("tokens     %zu in the stream, %lld scored in %d windows\n", ids.size(), r.scored, r.windows);
    std::printf("bits/weight %.3f\n", m.model.bits_per_weight());
    std::printf("perplexity %.4f  (mean NLL %.6f nats)\n", r.perplexity, r.mean_nll);
    std::printf("time       %.1f s, %.0f tokens/s with %d thread(s)\n", s, static_cast<double>(r.scored) / s, o.threads);
    return 0;
}

int cmd_generate(const parsed_args& a) {
    auto m = open_for(a, "generate");
    const auto& tok = need_tokenizer(m);
    std::vector<int> prompt;
    if (m.model.config.bos_token >= 0) prompt.push_back(m.model.config.bos_token);
    const std::string text = a.get("prompt");
    const auto ids = tok.encode(text);
    prompt.insert(prompt.end(), ids.begin(), ids.end());
    if (prompt.empty()) {
        if (tok.format() == "hf-json" && m.model.config.stop_token >= 0) prompt.push_back(m.model.config.stop_token); // <|endoftext|> starts a document
        else throw usage_error("give a non-empty --prompt");
    }
    lowbit::sampling_options o;
    o.max_new_tokens = static_cast<int>(a.integer("n-predict", 64, 0, 1 << 20));
    o.temperature = static_cast<float>(a.real("temp", 0.0, 0.0, 100.0));
    o.top_k = static_cast<int>(a.integer("top-k", 0, 0, 1 << 24));
    o.top_p = static_cast<float>(a.real("top-p", 1.0, 1e-6, 1.0));
    o.seed = static_cast<std::uint64_t>(a.integer("seed", 0, 0, (1LL << 62)));
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
    int prev = prompt.back();
    o.on_token = [&](int t) {
        const int one[1] = {t};
        std::fputs(tok.decode(one, prev).c_str(), stdout);
        std::fflush(stdout);
        prev = t;
    };
    const auto t0 = clock_type::now();
    const auto out = lowbit::generate(m.model, prompt, o);
    const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
    std::printf("\n");
    std::fflush(stdout);
    std::fprintf(stderr, "generated %zu tokens in %.2f s (%.1f tokens/s), %s, seed %llu\n", out.size(), s,
                 s > 0 ? static_cast<double>(out.size()) / s : 0.0, o.temperature == 0 ? "greedy" : "sampled",
                 static_cast<unsigned long long>(o.seed));
    return 0;
}

/// The GGUF file as stored (open_model dequantized it): metadata (arrays by length) and every
/// tensor's type, shape and bits per weight (bytes · 8 / elements); block tensors ("blk.*") summed.
void inspect_gguf_file(const fs::path& path) {
    const auto g = lowbit::io::gguf_file::open(path);
    std::printf("\nGGUF v%u, alignment %u, %zu metadata keys, %zu tensors\n", g.version(), g.alignment(), g.metadata().size(),
                g.tensors().size());
    for (const auto& [key, v] : g.metadata()) {
        std::string shown;
        if (v.type == lowbit::io::gguf_type::array) {
            shown = "[" + std::to_string(v.as_array(key).size()) + " x " + lowbit::io::gguf_type_name(v.element) + "]";
        } else if (v.type == lowbit::io::gguf_type::string) {
            shown = v.as_string(key);
            if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
        } else if (v.type == lowbit::io::gguf_type::boolean) {
            shown = v.as_bool(key) ? "true" : "false";
        } else if (v.is_integer()) {
            shown = std::to_string(v.as_int(key));
        } else {
            char b[32];
            std::snprintf(b, sizeof b, "%g", v.as_double(key));
            shown = b;
        }
        std::printf("  %-44s %s\n", key.c_str(), shown.c_str());
    }
    std::printf("\n%-34s %-8s %-18s %8s\n", "tensor", "type", "ne", "bits/w");
    double blk_bits = 0, blk_n = 0;
    for (const auto& t : g.tensors()) {
        std::string ne;
        for (auto d : t.shape) ne += (ne.empty() ? "" : "x") + std::to_string(d);
        const double n = static_cast<double>(t.elements());
        const double bits = 8.0 * static_cast<double>(t.bytes.size());
        if (t.name.rfind("blk.", 0) == 0 && t.shape.size() >= 2) {
            blk_bits += bits;
            blk_n += n;
        }
        std::printf("%-34s %-8s %-18s %8.3f\n", t.name.c_str(), lowbit::io::ggml_type_name(t.type), ne.c_str(), n > 0 ? bits / n : 0.0);
    }
    if (blk_n > 0) std::printf("\nblock matrices as stored: %.0f weights, %.3f bits/weight\n", blk_n, blk_bits / blk_n);
}

int cmd_inspect(const parsed_args& a) {
    auto m = open_for(a, "inspect");
    const auto& c = m.model.config;
    std::printf("model        %s\nkind         %s\narchitecture %s\n", a.positional[0].c_str(), m.kind.c_str(), m.model.architecture.c_str());
    std::printf("fields       %s\n", lowbit::model_fields(m.model).c_str());
    std::printf("tokenizer    %s (%d tokens)\n", m.tokenizer.empty() ? "none" : m.tokenizer.format().c_str(), m.tokenizer.vocab_size());
    if (m.quantized) {
        std::printf("recipe       %s (%s)\nrecipe fields %s\n", m.quantized->spec.name.c_str(), m.quantized->spec.description.c_str(),
                    lowbit::recipe_fields(m.quantized->spec).c_str());
    } else {
        std::printf("recipe       none (float weights)\n");
    }
    double params = 0;
    std::printf("\n%-28s %-17s %-12s %10s\n", "linear", "format", "shape", "bits/w");
    for (int l = 0; l < c.n_layers; ++l)
        for (const auto& id : m.model.block_linears(l)) {
            const auto& op = m.model.linear(id);
            const double n = static_cast<double>(op.in_features()) * static_cast<double>(op.out_features());
            params += n;
            std::string format = m.kind == "gguf" ? "fp32 (dequant)" : "fp32 dense";
            if (m.quantized) {
                const auto it = m.quantized->records.find(id.name());
                if (it != m.quantized->records.end()) {
                    format = it->second.format;
                    if (it->second.act_bits) format += " a" + std::to_string(it->second.act_bits); // ILA-AMP width
                }
            }
            char shape[32];
            std::snprintf(shape, sizeof shape, "%ldx%ld", static_cast<long>(op.out_features()), static_cast<long>(op.in_features()));
            std::printf("%-28s %-17s %-12s %10.3f\n", id.name().c_str(), format.c_str(), shape, op.storage_bits() / n);
        }
    std::printf("\nblock linears: %.0f weights, %.3f bits/weight; embedding %ldx%ld, classifier %s\n", params,
                m.model.bits_per_weight(), static_cast<long>(m.model.token_embedding.rows()),
                static_cast<long>(m.model.token_embedding.cols()), "fp32");
    if (m.kind == "gguf") inspect_gguf_file(a.positional[0]);
    return 0;
}

int cmd_recipes(const parsed_args&) {
    for (const auto& r : lowbit::builtin_recipes()) {
        std::printf("%-24s %s\n", r.name.c_str(), r.description.c_str());
        std::printf("%-24s %s\n", "", lowbit::recipe_fields(r).c_str());
    }
    std::printf("\nMixture-of-Experts pipelines (routed-expert models such as qwen3moe; --calib required; no --set):\n");
    for (const auto& p : moe_pipelines()) std::printf("%-24s %s\n", p.name.c_str(), p.description.c_str());
    return 0;
}

// --- compare: the demo's recipe table ---------------------------------------------------------

const std::vector<std::string> default_recipes = {
    "fp32",         "rtn-w4",       "gptq-w4",      "absmean-w1.58",   "twla-w1.58",      "twla-w1.58a8",
    "twla-w1.58a4", "binary-w1",    "bwla-w1",      "bwla-w1a6",       "bwla-w1a6-psp",   "fp32-a4",
    "fp32-a4-hadamard", "mxfp4-w4a4", "mxfp4-w4a4-hadamard",
    // the papers' learned rotations, grouped TRA-GPTQ and BiLLM, NLI operators
    "twla-w1.58-kotms", "twla-w1.58a4-kotms", "twla-tra-kotms", "billm-w1", "bwla-w1-okt", "bwla-w1a6-okt", "bwla-w1a6-okt-psp", "mxfp4-w4a4-torq",
    "fp32-nli", "twla-w1.58a8-kotms-nli",
    // end-to-end tuning of the fp16 scales and offsets (codes fixed)
    "gptq-w4-e2e", "twla-w1.58a8-e2e", "twla-w1.58-kotms-e2e", "bwla-w1a6-e2e"};

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string part; std::getline(ss, part, ',');)
        if (!part.empty()) out.push_back(part);
    return out;
}

// A file name for a recipe (variants such as "base:int4_linears=wv/layers.0.w2" hold '/' and ':'):
// every character other than letters, digits, '.', '-', '_', '=' and '+' becomes '_'.
std::string recipe_file_name(const std::string& recipe) {
    std::string f = recipe;
    for (char& c : f)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_' && c != '=' && c != '+') c = '_';
    return f + ".safetensors";
}

/// Median decode speed (tokens/s): one-token greedy steps from the first prompt token, `n` tokens.
double decode_tokens_per_second(const lowbit::llama_model& m, int n, int repeats) {
    n = std::min(n, m.config.seq_len - 1);
    std::vector<double> rates;
    for (int r = 0; r < repeats; ++r) {
        lowbit::kv_cache cache(m.config);
        int tok = std::max(m.config.bos_token, 0);
        const auto t0 = clock_type::now();
        for (int i = 0; i < n; ++i) {
            const int in[1] = {tok};
            const auto logits = lowbit::forward(m, cache, in, lowbit::logits_rows::last);
            tok = lowbit::argmax_row(logits, 0);
        }
        rates.push_back(n / std::chrono::duration<double>(clock_type::now() - t0).count());
    }
    std::sort(rates.begin(), rates.end());
    return rates[rates.size() / 2];
}

struct row {
    std::string recipe, description;
    double bits = 0, ppl = 0, ratio = 0, tps = 0, speedup = 0;
};

void write_markdown(const fs::path& p, const std::vector<row>& rows, const std::string& title, bool with_ppl) {
    std::ostringstream f; // written atomically below: a failed run never leaves half a table
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
    lowbit::io::detail::write_file_atomically(p, [&](std::ostream& o) { o << f.str(); }, "results");
}

/// Horizontal bar chart of one column (log scale for perplexity), plain SVG.
void write_svg(const fs::path& p, const std::vector<row>& rows, const std::string& title, bool ppl) {
    const int bar_h = 22, left = 190, width = 760, top = 40;
    const int h = top + static_cast<int>(rows.size()) * (bar_h + 6) + 30;
    double vmax = 0;
    for (const auto& r : rows) vmax = std::max(vmax, ppl ? std::log10(std::max(r.ppl, 1.0)) : r.speedup);
    if (vmax <= 0) vmax = 1;
    std::ostringstream f; // written atomically below: a failed run never leaves half a table
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
    lowbit::io::detail::write_file_atomically(p, [&](std::ostream& o) { o << f.str(); }, "results");
}

void print_table(const std::vector<row>& rows, bool with_ppl) {
    if (with_ppl)
        std::printf("%-24s %11s %11s %9s %12s %9s\n", "recipe", "bits/weight", "perplexity", "vs FP32", "decode tok/s", "speed");
    else
        std::printf("%-24s %11s %12s %9s\n", "recipe", "bits/weight", "decode tok/s", "speed");
    for (const auto& r : rows) {
        if (with_ppl)
            std::printf("%-24s %11.2f %11.3f %9.3f %12.0f %8.2fx\n", r.recipe.c_str(), r.bits, r.ppl, r.ratio, r.tps, r.speedup);
        else
            std::printf("%-24s %11.2f %12.1f %8.2fx\n", r.recipe.c_str(), r.bits, r.tps, r.speedup);
    }
}

int cmd_compare(const parsed_args& a) {
    if (!a.has("text")) throw usage_error("-f/--text FILE is required");
    auto src = open_for(a, "compare");
    if (src.kind == "lowbit") throw usage_error("compare needs a float model (Hugging Face folder or llama2.c file)");
    const auto& tok = need_tokenizer(src);
    const fs::path text_path = a.get("text");
    std::vector<int> eval_ids, calib_ids;
    std::string eval_desc;
    const bool jsonl = text_path.extension() == ".jsonl";
    if (!jsonl) {
        // llama2.c demo protocol: evaluate on the first N characters, calibrate on the rest
        const auto docs = lowbit::io::read_text_documents(text_path);
        const std::string& text = docs.at(0);
        const std::size_t eval_end = std::min<std::size_t>(static_cast<std::size_t>(a.integer("eval-chars", 60000, 1, 1LL << 40)), text.size());
        eval_ids = tok.encode_documents({text.substr(0, eval_end)});
        calib_ids = tok.encode_documents({text.substr(eval_end)});
        eval_desc = "the first " + std::to_string(eval_end) + " characters";
    } else {
        eval_ids = encode_file(tok, text_path, src.model.config.vocab_size);
        eval_desc = text_path.filename().string();
    }
    if (a.has("calib")) calib_ids = encode_file(tok, a.get("calib"), src.model.config.vocab_size);
    std::vector<std::string> recipes;
    const std::string which = a.get("recipes", "default");
    if (which == "all")
        for (const auto& r : lowbit::builtin_recipes()) recipes.push_back(r.name);
    else if (which == "default") recipes = default_recipes;
    else recipes = split(which);
    for (const auto& r : recipes) (void)lowbit::find_recipe(r); // unknown names fail before any work
    const fs::path out = a.get("out", "lowbit-out");
    fs::create_directories(out);
    lowbit::perplexity_options po;
    po.max_windows = static_cast<int>(a.integer("max-windows", -1, 1, 1 << 30));
    po.threads = static_cast<int>(a.integer("threads", 1, 1, 256));
    const int decode_n = static_cast<int>(a.integer("decode-tokens", 200, 1, 1 << 20));
    const int repeats = static_cast<int>(a.integer("repeats", 3, 1, 100));
    lowbit::quantize_options qo;
    qo.calib_windows = static_cast<int>(a.integer("calib-windows", 8, 1, 1 << 20));
    qo.progress = [](const std::string& s) { std::fprintf(stderr, "  %s\n", s.c_str()); };
    std::fprintf(stderr, "eval %s = %zu tokens; calib %zu tokens\n", eval_desc.c_str(), eval_ids.size(), calib_ids.size());

    std::vector<row> rows;
    double fp32_ppl = 0, fp32_tps = 0;
    long long scored = 0;
    for (const auto& name : recipes) {
        const lowbit::recipe r = lowbit::find_recipe(name);
        std::fprintf(stderr, "[%s] %s\n", r.name.c_str(), r.description.c_str());
        lowbit::quantized_model q{r, {}, {}, tok.format(), tok.bytes()};
        q.model = lowbit::quantize_model(src.model, r, calib_ids, qo, &q.records);
        lowbit::save_quantized_model(out / recipe_file_name(r.name), q);
        row x{r.name, r.description, q.model.bits_per_weight()};
        po.progress = window_progress("  perplexity");
        const auto pr = lowbit::perplexity(q.model, eval_ids, po);
        x.ppl = pr.perplexity;
        scored = pr.scored;
        x.tps = decode_tokens_per_second(q.model, decode_n, repeats);
        if (r.name == "fp32") {
            fp32_ppl = x.ppl;
            fp32_tps = x.tps;
        }
        po.progress = {};
        if (fp32_ppl == 0) fp32_ppl = lowbit::perplexity(src.model, eval_ids, po).perplexity;
        if (fp32_tps == 0) fp32_tps = decode_tokens_per_second(src.model, decode_n, repeats);
        x.ratio = x.ppl / fp32_ppl;
        x.speedup = x.tps / fp32_tps;
        std::fprintf(stderr, "  -> %.2f bits/weight, perplexity %.3f, %.0f tok/s\n", x.bits, x.ppl, x.tps);
        rows.push_back(x);
    }
    const std::string name = fs::path(a.positional[0]).filename().string();
    std::printf("\n%s, perplexity on %s (%lld scored tokens), decode %d tokens (median of %d)\n\n", name.c_str(),
                eval_desc.c_str(), scored, decode_n, repeats);
    print_table(rows, true);
    write_markdown(out / "results.md", rows, "lowbit recipes on " + name, true);
    write_svg(out / "results.svg", rows, name + ": perplexity per recipe", true);

    if (a.has("speed-model")) {
        // Speed only: the same architecture at dim 2048, hidden 5632, 8 layers, random weights.
        lowbit::llama_config c;
        c.dim = 2048;
        c.hidden_dim = 5632;
        c.n_layers = 8;
        c.n_heads = 16;
        c.n_kv_heads = 8;
        c.vocab_size = 512;
        c.seq_len = 256;
        std::fprintf(stderr, "[speed model] dim %d, hidden %d, %d layers, random weights\n", c.dim, c.hidden_dim, c.n_layers);
        const auto big = lowbit::random_llama(c, 1234);
        std::vector<row> srows;
        const int n = std::min(decode_n, 64);
        double base = 0;
        for (const char* rn : {"fp32", "rtn-w4a8", "absmean-w1.58a8", "absmean-w1.58"}) {
            const auto r = lowbit::find_recipe(rn);
            const auto m = lowbit::quantize_model(big, r, {});
            row x{r.name, r.description + " (random weights, speed only)", m.bits_per_weight()};
            x.tps = decode_tokens_per_second(m, n, repeats);
            if (base == 0) base = x.tps;
            x.speedup = x.tps / base;
            std::fprintf(stderr, "  %s: %.1f tok/s\n", rn, x.tps);
            srows.push_back(x);
        }
        std::printf("\nspeed-only model (dim 2048, hidden 5632, 8 layers, random weights), decode %d tokens\n\n", n);
        print_table(srows, false);
        write_markdown(out / "speed.md", srows, "Decode speed, dim 2048 / hidden 5632 / 8 layers (random weights)", false);
        write_svg(out / "speed.svg", srows, "dim-2048 model: decode speed vs FP32", false);
    }
    std::printf("\nwrote %s/results.md, results.svg%s and one .safetensors per recipe\n", out.string().c_str(),
                a.has("speed-model") ? ", speed.md, speed.svg" : "");
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
        print_main_help();
        return argc < 2 ? 2 : 0;
    }
    if (std::string(argv[1]) == "--version") {
        std::printf("lowbit-quantize %d.%d.%d\n", LOWBIT_VERSION_MAJOR, LOWBIT_VERSION_MINOR, LOWBIT_VERSION_PATCH);
        return 0;
    }
    const std::string name = argv[1];
    const auto cmds = commands();
    const command_spec* cmd = nullptr;
    for (const auto& c : cmds)
        if (name == c.name) cmd = &c;
    try {
        if (!cmd) throw usage_error("unknown command '" + name + "'");
        const parsed_args a = parse_args(*cmd, argc, argv, 2);
        if (a.has("help")) {
            print_help(*cmd);
            return 0;
        }
        if (name == "quantize") return cmd_quantize(a);
        if (name == "perplexity") return cmd_perplexity(a);
        if (name == "generate") return cmd_generate(a);
        if (name == "inspect") return cmd_inspect(a);
        if (name == "recipes") return cmd_recipes(a);
        return cmd_compare(a);
    } catch (const usage_error& e) {
        std::fprintf(stderr, "lowbit-quantize: %s\n", e.what());
        if (cmd) std::fprintf(stderr, "usage: lowbit-quantize %s   (--help for details)\n", cmd->synopsis);
        else std::fprintf(stderr, "run `lowbit-quantize --help` for the commands\n");
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "lowbit-quantize: error: %s\n", e.what());
        return 1;
    }
}
