// Driver of scripts/llama-cpp-check: lowbit's side of the llama.cpp interoperability check.
//   gguf_tool export <hf-folder> <out.gguf> <type> [recipe [calib.jsonl]]
//        FP export with block linears as <type> (F32, F16, BF16, Q8_0, Q4_0, TQ1_0, TQ2_0, MXFP4), or the
//        model quantized by a lowbit recipe exported through its records (<type> then picks TQ1_0/TQ2_0 for ternary)
//   gguf_tool logits <model.gguf> <ids.u32> <out.f32>     lowbit's forward of the imported GGUF, one window
//   gguf_tool ppl <model.gguf> <ids.u32> <max_windows> <threads>   lowbit's perplexity (models README protocol)
//   gguf_tool bits <model.gguf>                           bits per weight of the block linears, counted from the file
#include <lowbit/model/checkpoint.hpp> // open_model
#include <lowbit/model/gguf_model.hpp>
#include <lowbit/io/text_corpus.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>

namespace {
std::vector<int> read_ids(const std::string& p) {
    std::ifstream f(p, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot read " + p);
    const auto n = static_cast<std::size_t>(f.tellg());
    f.seekg(0);
    std::vector<std::uint32_t> u(n / 4);
    f.read(reinterpret_cast<char*>(u.data()), static_cast<std::streamsize>(n));
    return {u.begin(), u.end()};
}
} // namespace

int main(int argc, char** argv) try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() >= 4 && a[0] == "export") {
        auto o = lowbit::open_model(a[1]);
        lowbit::gguf_export_options eo;
        const auto t = lowbit::io::ggml_type_from_name(a[3]);
        if (a.size() >= 5) {
            lowbit::quantized_model q;
            q.spec = lowbit::find_recipe(a[4]);
            std::vector<int> calib;
            if (a.size() >= 6) {
                calib = o.tokenizer.encode_documents(lowbit::io::read_text_documents(a[5]));
            }
            lowbit::quantize_options qo;
            qo.calib_window = 512;
            qo.calib_windows = 16;
            q.model = lowbit::quantize_model(o.model, q.spec, calib, qo, &q.records);
            if (t == lowbit::io::ggml_type::tq1_0 || t == lowbit::io::ggml_type::tq2_0) eo.ternary_type = t;
            lowbit::export_gguf(q, o.tokenizer, a[2], eo);
        } else {
            eo.weight_type = t;
            lowbit::export_gguf(o.model, o.tokenizer, a[2], eo);
        }
        return 0;
    }
    if (a.size() == 4 && a[0] == "logits") {
        const auto m = lowbit::import_gguf(a[1]);
        const auto ids = read_ids(a[2]);
        lowbit::kv_cache cache(m.model.config);
        const lowbit::matrix_f l = lowbit::forward(m.model, cache, ids, lowbit::logits_rows::all);
        std::ofstream f(a[3], std::ios::binary);
        f.write(reinterpret_cast<const char*>(l.data()), static_cast<std::streamsize>(l.size() * 4));
        return 0;
    }
    if (a.size() == 5 && a[0] == "ppl") {
        const auto m = lowbit::import_gguf(a[1]);
        const auto ids = read_ids(a[2]);
        lowbit::perplexity_options po;
        po.window = 512;
        po.max_windows = std::stoi(a[3]);
        po.threads = std::stoi(a[4]);
        const auto r = lowbit::perplexity(m.model, ids, po);
        std::printf("%.6f %lld %d\n", r.perplexity, r.scored, r.windows);
        return 0;
    }
    if (a.size() == 2 && a[0] == "bits") {
        const auto g = lowbit::io::gguf_file::open(a[1]);
        double bits = 0, n = 0;
        for (const auto& t : g.tensors())
            if (t.name.rfind("blk.", 0) == 0 && t.shape.size() >= 2 && t.name.find("ffn_gate_inp") == std::string::npos) {
                bits += 8.0 * static_cast<double>(t.bytes.size());
                n += static_cast<double>(t.elements());
            }
        std::printf("%.4f\n", bits / n);
        return 0;
    }
    std::cerr << "usage: see the comment at the top of tests/interop/gguf_tool.cpp\n";
    return 2;
} catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
}
