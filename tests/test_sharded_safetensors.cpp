// Tests for lowbit/io/sharded_safetensors.hpp.
// Oracles:
//  - the three real Hugging Face checkpoints of ../shared/models (transformers' save_pretrained):
//    tensor counts derived from config.json by the architectures' layer formulas, the set of names
//    read shard by shard with safetensors_file (not through the index), shapes from config.json,
//    and values checked against checksums computed once by Python (see `reference_sums`);
//  - hand-built folders (written by the test into a temporary folder it removes) for every refusal.
#include <lowbit/io/sharded_safetensors.hpp>

#include <doctest/doctest.h>

#include "models.hpp"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

using lowbit::format_error;
using lowbit::io::safetensors_file;
using lowbit::io::safetensors_index;
using lowbit::io::sharded_safetensors;
using lowbit::io::st_dtype;
namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

/// config.json as a parsed JSON object; `num(key)` reads a non-negative integer member.
struct config {
    lowbit::detail::json_value root;
    explicit config(const fs::path& p) : root(lowbit::detail::json_parser(slurp(p), "config.json").parse_document()) {}
    std::uint64_t num(const std::string& key) const {
        for (std::size_t i = 0; i < root.keys.size(); ++i)
            if (root.keys[i] == key) {
                std::uint64_t u = 0;
                REQUIRE(root.items[i].as_uint(u));
                return u;
            }
        FAIL("config.json has no " << key);
        return 0;
    }
};

/// Names of every tensor of every `*.safetensors` file of a folder, read file by file.
std::set<std::string> names_in_shards(const fs::path& folder) {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(folder))
        if (e.path().extension() == ".safetensors")
            for (const auto& n : safetensors_file::open(e.path()).names()) CHECK(out.insert(n).second);
    return out;
}

std::vector<std::uint64_t> shape_of(const sharded_safetensors& s, const std::string& n) { return s.tensor(n).shape; }

// Reference checksums, produced once with Python 3.11 (numpy 2.4.6, ml_dtypes 0.7.0, safetensors
// 0.8.0) by reading each tensor's bytes at its header offsets, converting with
// `np.frombuffer(raw, dtype=ml_dtypes.bfloat16).astype(np.float32)` (checked equal to
// `(u16 << 16).view(float32)`): sum = math.fsum of the values (exact sum rounded once to double),
// first and last element, and the sum of the raw uint16 patterns. The script also checked that the
// safetensors library's key set of the shards equals the index's weight_map.
struct reference_sum {
    const char* model;
    const char* tensor;
    std::vector<std::uint64_t> shape;
    double sum;
    float first, last;
    std::uint64_t sum_bits;
};
const reference_sum reference_sums[] = {
    {"llama-21M-en", "model.embed_tokens.weight", {4096, 512}, -1167.6240172912112, 0.005706787109375f, 0.0030517578125f, 67307241513ull},
    {"llama-21M-en", "model.layers.0.self_attn.q_proj.weight", {512, 512}, -5.220674550160766, 0.00121307373046875f, 0.0023956298828125f, 8355518176ull},
    {"llama-21M-en", "model.layers.5.mlp.down_proj.weight", {512, 1536}, -31.214780697599053, -0.029541015625f, -0.0908203125f, 25109877902ull},
    {"llama-21M-en", "model.norm.weight", {512}, 746.8359375, 1.4453125f, 1.53125f, 8353131ull},
    {"qwen3moe-18M-en", "model.layers.0.mlp.experts.3.gate_proj.weight", {256, 512}, 39.62666000518948, -0.042236328125f, 0.002105712890625f, 4164667354ull},
    {"qwen3moe-18M-en", "model.layers.3.mlp.gate.weight", {8, 512}, 0.28545230627059937, -0.054443359375f, 0.051513671875f, 130573104ull},
    {"qwen3moe-18M-en", "model.layers.0.self_attn.q_norm.weight", {64}, 79.34375, 1.34375f, 1.140625f, 1042348ull},
    {"qwen3moe-18M-en", "model.layers.2.mlp.experts.7.down_proj.weight", {512, 256}, 15.156880468130112, 0.005950927734375f, 0.0010223388671875f, 4174999547ull},
    {"rwkv4-25M-en", "head.weight", {4096, 512}, -308.6600495870225, -0.002685546875f, 0.0224609375f, 67055749640ull},
    {"rwkv4-25M-en", "rwkv.blocks.0.attention.key.weight", {512, 512}, 37.682743925601244, 0.024658203125f, 0.005126953125f, 8378189914ull},
    {"rwkv4-25M-en", "rwkv.blocks.0.attention.time_decay", {512}, -158.98733520507812, -4.875f, 2.859375f, 17023520ull},
};

/// A temporary folder removed at scope exit.
struct temp_dir {
    fs::path path;
    explicit temp_dir(const std::string& tag)
        : path(fs::temp_directory_path() / ("lowbit_test_sharded_" + std::to_string(::getpid()) + "_" + tag)) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

void write_text(const fs::path& p, const std::string& s) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(s.data(), static_cast<std::streamsize>(s.size()));
}

/// A shard holding F32 tensors `names`, each [2] = {k, -k} for the k-th name.
void write_shard(const fs::path& p, const std::vector<std::string>& names) {
    lowbit::io::safetensors_writer w;
    float k = 1;
    for (const auto& n : names) {
        lowbit::matrix_f m(1, 2);
        m << k, -k;
        w.add(n, m);
        k += 1;
    }
    w.set_metadata("format", "pt");
    w.write(p);
}

std::string index_json(const std::vector<std::pair<std::string, std::string>>& map) {
    std::string s = R"({"metadata": {"total_size": 16}, "weight_map": {)";
    for (std::size_t i = 0; i < map.size(); ++i)
        s += (i ? ", \"" : "\"") + map[i].first + "\": \"" + map[i].second + "\"";
    return s + "}}";
}

/// The format_error message of opening `p` ("" if it opened).
std::string open_error(const fs::path& p) {
    try {
        (void)sharded_safetensors::open(p);
    } catch (const format_error& e) {
        return e.what();
    }
    return "";
}

bool has(const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; }

} // namespace

TEST_CASE("the three real checkpoints open; names and counts match the index, the shards and config.json") {
    struct model_case {
        fs::path folder;
        std::size_t count_from_config;
        std::size_t shards;
    };
    const config llama(lowbit_test::llama21m("config.json")), qwen(lowbit_test::qwen3moe18m("config.json")),
        rwkv(lowbit_test::rwkv4_25m("config.json"));
    // per layer: llama 4 attention + 3 MLP projections + 2 norms; qwen3-MoE 4 + q/k norms + 2 norms +
    // router + 3 per expert; RWKV-4 4 time-mix linears + decay, first, 3 mixes + 3 channel-mix
    // linears + 2 mixes + ln1/ln2 weight and bias; plus embeddings, final norm (and RWKV's pre_ln,
    // ln_out with bias, head)
    const model_case cases[] = {
        {lowbit_test::llama21m(), llama.num("num_hidden_layers") * 9 + 2, 3},
        {lowbit_test::qwen3moe18m(), qwen.num("num_hidden_layers") * (4 + 2 + 2 + 1 + 3 * qwen.num("num_local_experts")) + 2, 3},
        {lowbit_test::rwkv4_25m(), rwkv.num("num_hidden_layers") * 18 + 1 + 2 + 2 + 1, 4},
    };
    const std::size_t python_counts[] = {56, 134, 114}; // len(weight_map), from the Python script
    for (std::size_t c = 0; c < 3; ++c) {
        const auto& mc = cases[c];
        CAPTURE(mc.folder);
        const auto s = sharded_safetensors::open(mc.folder);
        CHECK(s.size() == mc.count_from_config);
        CHECK(s.size() == python_counts[c]);
        CHECK(s.shards().size() == mc.shards);
        CHECK(s.source() == mc.folder / "model.safetensors.index.json");
        const auto names = s.names();
        CHECK(std::set<std::string>(names.begin(), names.end()) == names_in_shards(mc.folder));
        CHECK(std::is_sorted(names.begin(), names.end()));
        CHECK(s.index().weight_map.size() == names.size());
        CHECK(s.index().total_size.has_value());
        std::uint64_t bytes = 0;
        for (const auto& n : names) {
            const auto t = s.tensor(n);
            CHECK(t.dtype == st_dtype::BF16);
            bytes += t.bytes.size();
            CHECK(s.shard_of(n).path().filename().string() == s.index().weight_map.at(n));
        }
        CHECK(bytes == *s.index().total_size); // these checkpoints have no shared tensors
        // the same checkpoint through the index path
        CHECK(sharded_safetensors::open(mc.folder / "model.safetensors.index.json").names() == names);
        CHECK_THROWS_AS((void)s.tensor("no.such.tensor"), lowbit::invalid_argument);
    }
    // shapes against config.json
    const auto l = sharded_safetensors::open(lowbit_test::llama21m());
    const std::uint64_t h = llama.num("hidden_size"), hd = llama.num("head_dim");
    CHECK(shape_of(l, "model.embed_tokens.weight") == std::vector<std::uint64_t>{llama.num("vocab_size"), h});
    CHECK(shape_of(l, "model.embed_tokens.weight") == std::vector<std::uint64_t>{4096, 512});
    CHECK(shape_of(l, "model.layers.0.self_attn.q_proj.weight") == std::vector<std::uint64_t>{llama.num("num_attention_heads") * hd, h});
    CHECK(shape_of(l, "model.layers.3.self_attn.k_proj.weight") == std::vector<std::uint64_t>{llama.num("num_key_value_heads") * hd, h});
    CHECK(shape_of(l, "model.layers.5.mlp.gate_proj.weight") == std::vector<std::uint64_t>{llama.num("intermediate_size"), h});
    CHECK(shape_of(l, "model.layers.5.mlp.down_proj.weight") == std::vector<std::uint64_t>{h, llama.num("intermediate_size")});
    CHECK(shape_of(l, "model.norm.weight") == std::vector<std::uint64_t>{h});
    CHECK(!l.contains("lm_head.weight")); // tied
    const auto q = sharded_safetensors::open(lowbit_test::qwen3moe18m());
    CHECK(shape_of(q, "model.layers.0.mlp.experts.3.gate_proj.weight") ==
          std::vector<std::uint64_t>{qwen.num("moe_intermediate_size"), qwen.num("hidden_size")});
    CHECK(shape_of(q, "model.layers.0.mlp.experts.3.gate_proj.weight") == std::vector<std::uint64_t>{256, 512});
    CHECK(shape_of(q, "model.layers.1.mlp.gate.weight") == std::vector<std::uint64_t>{qwen.num("num_local_experts"), qwen.num("hidden_size")});
    CHECK(shape_of(q, "model.layers.2.self_attn.k_norm.weight") == std::vector<std::uint64_t>{qwen.num("head_dim")});
    const auto r = sharded_safetensors::open(lowbit_test::rwkv4_25m());
    CHECK(shape_of(r, "rwkv.blocks.2.feed_forward.key.weight") == std::vector<std::uint64_t>{rwkv.num("intermediate_size"), rwkv.num("hidden_size")});
    CHECK(shape_of(r, "rwkv.blocks.2.attention.output.weight") == std::vector<std::uint64_t>{rwkv.num("hidden_size"), rwkv.num("attention_hidden_size")});
    CHECK(shape_of(r, "head.weight") == std::vector<std::uint64_t>{rwkv.num("vocab_size"), rwkv.num("hidden_size")});
}

TEST_CASE("values of real BF16 tensors equal the checksums computed independently in Python") {
    for (const auto& ref : reference_sums) {
        CAPTURE(ref.model);
        CAPTURE(ref.tensor);
        const auto s = sharded_safetensors::open(lowbit_test::hf_model(ref.model));
        const auto t = s.tensor(ref.tensor);
        CHECK(t.shape == ref.shape);
        const lowbit::matrix_f m = s.to_matrix(ref.tensor);
        REQUIRE(static_cast<std::uint64_t>(m.size()) == t.numel());
        CHECK(m.rows() == static_cast<Eigen::Index>(ref.shape.size() == 2 ? ref.shape[0] : 1));
        // Neumaier-compensated double sum: within a few ulps of the exact sum
        double sum = 0, comp = 0, abs_sum = 0;
        for (Eigen::Index i = 0; i < m.size(); ++i) {
            const double x = m.data()[i], u = sum + x;
            comp += std::fabs(sum) >= std::fabs(x) ? (sum - u) + x : (x - u) + sum;
            sum = u;
            abs_sum += std::fabs(x);
        }
        sum += comp;
        CHECK(std::fabs(sum - ref.sum) <= 1e-13 * abs_sum);
        CHECK(m.data()[0] == ref.first);
        CHECK(m.data()[m.size() - 1] == ref.last);
        std::uint64_t bits = 0;
        for (std::size_t i = 0; i < t.bytes.size(); i += 2)
            bits += static_cast<std::uint64_t>(t.bytes[i]) | static_cast<std::uint64_t>(t.bytes[i + 1]) << 8;
        CHECK(bits == ref.sum_bits);
    }
}

TEST_CASE("a folder with one model.safetensors, or a single file, opens without an index") {
    temp_dir d("single");
    write_shard(d.path / "model.safetensors", {"a.weight", "b.weight"});
    const auto s = sharded_safetensors::open(d.path);
    CHECK(s.names() == std::vector<std::string>{"a.weight", "b.weight"});
    CHECK(s.source() == d.path / "model.safetensors");
    CHECK(s.shards().size() == 1);
    CHECK(s.index().weight_map.at("b.weight") == "model.safetensors");
    CHECK(s.to_matrix("b.weight")(0, 1) == -2.0f);
    write_shard(d.path / "other.safetensors", {"x"});
    CHECK(sharded_safetensors::open(d.path / "other.safetensors").names() == std::vector<std::string>{"x"});
    // a sharded folder copied from the real checkpoint's layout: shards found through the index
    write_shard(d.path / "s1.safetensors", {"p", "q"});
    write_shard(d.path / "s2.safetensors", {"r"});
    write_text(d.path / "model.safetensors.index.json", index_json({{"p", "s1.safetensors"}, {"q", "s1.safetensors"}, {"r", "s2.safetensors"}}));
    const auto t = sharded_safetensors::open(d.path); // the index wins over model.safetensors
    CHECK(t.names() == std::vector<std::string>{"p", "q", "r"});
    CHECK(t.to_matrix("r")(0, 0) == 1.0f);
    CHECK(t.to_matrix("q")(0, 0) == 2.0f);
    CHECK(t.index().total_size == 16u);
    // shards in a subfolder are allowed
    fs::create_directories(d.path / "sub");
    write_shard(d.path / "sub" / "s3.safetensors", {"z"});
    write_text(d.path / "nested.index.json", index_json({{"z", "sub/s3.safetensors"}}));
    CHECK(sharded_safetensors::open(d.path / "nested.index.json").names() == std::vector<std::string>{"z"});
}

TEST_CASE("every refusal names the files and the tensor") {
    temp_dir d("bad");
    const fs::path idx = d.path / "model.safetensors.index.json";
    write_shard(d.path / "s1.safetensors", {"p", "q"});
    write_shard(d.path / "s2.safetensors", {"r"});

    SUBCASE("an index naming a missing shard file") {
        write_text(idx, index_json({{"p", "s1.safetensors"}, {"q", "s1.safetensors"}, {"r", "s9.safetensors"}}));
        const auto e = open_error(d.path);
        CAPTURE(e);
        CHECK(has(e, idx.string()));
        CHECK(has(e, "s9.safetensors"));
        CHECK(has(e, "'r'"));
        CHECK(has(e, "does not exist"));
    }
    SUBCASE("an index naming a tensor absent from its shard") {
        write_text(idx, index_json({{"p", "s1.safetensors"}, {"q", "s1.safetensors"}, {"r", "s2.safetensors"}, {"ghost", "s2.safetensors"}}));
        const auto e = open_error(d.path);
        CAPTURE(e);
        CHECK(has(e, idx.string()));
        CHECK(has(e, "s2.safetensors"));
        CHECK(has(e, "'ghost'"));
        CHECK(has(e, "has no such tensor"));
    }
    SUBCASE("an index mapping a tensor to the wrong shard") {
        write_text(idx, index_json({{"p", "s1.safetensors"}, {"q", "s2.safetensors"}, {"r", "s2.safetensors"}}));
        const auto e = open_error(d.path);
        CAPTURE(e);
        CHECK(has(e, "'q'"));
        CHECK(has(e, "s2.safetensors"));
    }
    SUBCASE("a tensor in a shard but not in the index") {
        write_text(idx, index_json({{"p", "s1.safetensors"}, {"r", "s2.safetensors"}}));
        const auto e = open_error(d.path);
        CAPTURE(e);
        CHECK(has(e, "'q'"));
        CHECK(has(e, "s1.safetensors"));
        CHECK(has(e, "is not in index"));
        CHECK(has(e, idx.string()));
    }
    SUBCASE("a tensor name in two shards") {
        write_shard(d.path / "s3.safetensors", {"r", "t"});
        write_text(idx, index_json({{"p", "s1.safetensors"}, {"q", "s1.safetensors"}, {"r", "s2.safetensors"}, {"t", "s3.safetensors"}}));
        const auto e = open_error(d.path);
        CAPTURE(e);
        CHECK(has(e, "'r'"));
        CHECK(has(e, "s2.safetensors"));
        CHECK(has(e, "s3.safetensors"));
        CHECK(has(e, "two shards"));
    }
    SUBCASE("a truncated shard") {
        write_text(idx, index_json({{"p", "s1.safetensors"}, {"q", "s1.safetensors"}, {"r", "s2.safetensors"}}));
        CHECK(open_error(d.path).empty());
        fs::resize_file(d.path / "s2.safetensors", fs::file_size(d.path / "s2.safetensors") - 3);
        const auto e = open_error(d.path);
        CAPTURE(e);
        CHECK(has(e, (d.path / "s2.safetensors").string()));
        CHECK(has(e, "'r'"));
        CHECK(has(e, "truncated"));
        // an empty shard file
        write_text(d.path / "s2.safetensors", "");
        CHECK(has(open_error(d.path), "s2.safetensors"));
    }
    SUBCASE("malformed index JSON") {
        const std::string bad[] = {
            "",
            "{",
            "[]",
            R"({"metadata": {}})",                                                  // no weight_map
            R"({"weight_map": []})",
            R"({"weight_map": {"p": 1}})",                                          // not a string
            R"({"weight_map": {"p": "s1.safetensors",}})",                          // trailing comma
            R"({"weight_map": {"p": "s1.safetensors", "p": "s1.safetensors"}})",    // duplicate key
            R"({"weight_map": {"p": "../s1.safetensors"}})",                        // outside the folder
            R"({"weight_map": {"p": "/etc/passwd"}})",
            R"({"weight_map": {"p": "a//b"}})",
            R"({"weight_map": {"p": "./s1.safetensors"}})",
            R"({"weight_map": {"p": "a\\b"}})",
            R"({"weight_map": {"p": "a\u0000b"}})",
            R"({"weight_map": {"p": ""}})",
            R"({"metadata": [], "weight_map": {}})",
            R"({"metadata": {"total_size": -1}, "weight_map": {}})",
            R"({"metadata": {"total_size": "8"}, "weight_map": {}})",
        };
        for (const auto& text : bad) {
            CAPTURE(text);
            write_text(idx, text);
            const auto e = open_error(d.path);
            CHECK(has(e, "safetensors index"));
            CHECK(has(e, idx.string()));
            CHECK_THROWS_AS((void)safetensors_index::parse(text), format_error);
        }
    }
    SUBCASE("a folder with neither file, a missing path") {
        fs::remove(d.path / "s1.safetensors");
        fs::remove(d.path / "s2.safetensors");
        const auto e = open_error(d.path);
        CHECK(has(e, d.path.string()));
        CHECK(has(e, "model.safetensors.index.json"));
        CHECK(has(open_error(d.path / "missing.index.json"), "missing.index.json"));
        CHECK(has(open_error(d.path / "missing.safetensors"), "missing.safetensors"));
    }
}

TEST_CASE("safetensors_index: accepted forms, ignored members, JSON round trip") {
    const auto a = safetensors_index::parse(
        R"({"metadata": {"total_size": 41956352, "total_parameters": 20978176, "format": "pt", "x": [1]},
            "weight_map": {"b": "m-2.safetensors", "a": "m-1.safetensors", "c": "m-1.safetensors", "é \"q\"": "sub/m-3.safetensors"},
            "extra": {"ignored": true}})");
    CHECK(a.weight_map.size() == 4);
    CHECK(a.total_size == 41956352u);
    CHECK(a.total_parameters == 20978176u);
    CHECK(a.shard_files() == std::vector<std::string>{"m-1.safetensors", "m-2.safetensors", "sub/m-3.safetensors"});
    CHECK(safetensors_index::parse(a.to_json()) == a);
    const auto empty = safetensors_index::parse(R"({"weight_map": {}})");
    CHECK(empty.weight_map.empty());
    CHECK(!empty.total_size);
    CHECK(safetensors_index::parse(empty.to_json()) == empty);
    // the real index re-serialises to an equal index
    const auto real = safetensors_index::parse(slurp(lowbit_test::qwen3moe18m("model.safetensors.index.json")));
    CHECK(real.weight_map.size() == 134);
    CHECK(safetensors_index::parse(real.to_json()) == real);
    CHECK(safetensors_index::valid_shard_name("model-00001-of-00003.safetensors"));
    CHECK(!safetensors_index::valid_shard_name("a/../b"));
    CHECK(!safetensors_index::valid_shard_name("a/"));
    CHECK(!safetensors_index::valid_shard_name(".."));
    CHECK(!safetensors_index::valid_shard_name("./a"));
    // a component that merely starts with dots is an ordinary name (found by fuzz_safetensors_index,
    // whose own check was too strict)
    CHECK(safetensors_index::valid_shard_name("..a.safetensors"));
    CHECK(safetensors_index::valid_shard_name("dir/...safetensors"));
    const auto dotted = safetensors_index::parse(R"({"weight_map": {"p": "..a.safetensors"}})");
    CHECK(dotted.shard_files() == std::vector<std::string>{"..a.safetensors"});
}
