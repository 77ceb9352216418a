// Writes small valid seed inputs for the fuzz targets into the folder given as argv[1]:
// a tiny llama2.c checkpoint, a tiny tokenizer, a safetensors file and a safetensors index JSON;
// seeds of the targets scripts/fuzz has no case for go to <folder>/<target>/ (fuzz_packed)
// (scripts/fuzz also adds the real tok512.bin and llama-21M-en's index when it finds them).
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/safetensors.hpp>
#include <lowbit/salient_binary.hpp>
#include <lowbit/salient_ternary.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

static void save(const std::string& path, const std::vector<std::byte>& b) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string dir = argv[1];
    lowbit::io::llama2c_checkpoint ck;
    ck.config = {4, 6, 1, 2, 1, 5, 3, true};
    ck.token_embedding = lowbit::matrix_f::Constant(5, 4, 0.5f);
    lowbit::io::llama2c_layer l;
    l.rms_att = l.rms_ffn = lowbit::vector_f::Ones(4);
    l.wq = l.wo = lowbit::matrix_f::Identity(4, 4);
    l.wk = l.wv = lowbit::matrix_f::Constant(2, 4, 0.25f);
    l.w1 = l.w3 = lowbit::matrix_f::Constant(6, 4, -0.5f);
    l.w2 = lowbit::matrix_f::Constant(4, 6, 1.0f);
    ck.layers.push_back(l);
    ck.rms_final = lowbit::vector_f::Ones(4);
    save(dir + "/llama2c_tiny.bin", lowbit::io::serialize_llama2c(ck));

    std::vector<std::byte> tok;
    auto put = [&tok](const void* p, std::size_t n) {
        const auto* b = static_cast<const std::byte*>(p);
        tok.insert(tok.end(), b, b + n);
    };
    const std::int32_t max_len = 6;
    put(&max_len, 4);
    const char* pieces[] = {"<unk>", "<s>", "</s>", " ", "a", "b", " a", "ab"};
    float score = 0;
    for (const char* p : pieces) {
        const auto n = static_cast<std::int32_t>(std::strlen(p));
        put(&score, 4);
        put(&n, 4);
        put(p, static_cast<std::size_t>(n));
        score -= 1;
    }
    save(dir + "/tokenizer_tiny.bin", tok);

    lowbit::io::safetensors_writer w;
    w.add("layers.0.wq", lowbit::matrix_f::Identity(2, 3));
    const std::vector<std::byte> packed{std::byte{0x12}, std::byte{0x34}};
    w.add("layers.0.wq.qweight", lowbit::io::st_dtype::U8, {2}, packed);
    w.add("scalar", lowbit::io::st_dtype::I16, {}, packed);
    w.set_metadata("lowbit.format", "rtn4");
    save(dir + "/tiny.safetensors", w.serialize());

    const std::string index = R"({"metadata": {"total_size": 40, "total_parameters": 10},
 "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors",
  "model.embed_tokens.weight": "model-00001-of-00002.safetensors", "a\u00e9\"q": "sub/x.safetensors"}})";
    std::ofstream(dir + "/index_tiny.json", std::ios::binary) << index;

    // fuzz_packed: format byte, rows, cols (2 bytes LE), then codes (one per format, 3 x 300)
    std::filesystem::create_directories(dir + "/fuzz_packed");
    for (int fmt = 0; fmt < 5; ++fmt) {
        std::vector<std::byte> p{std::byte(fmt | (fmt % 2 ? 8 : 0)), std::byte{2}, std::byte{43}, std::byte{1}};
        for (int k = 0; k < 4 * 128; ++k) p.push_back(static_cast<std::byte>((k * 37 + fmt) & 0xFF));
        save(dir + "/fuzz_packed/packed_" + std::to_string(fmt) + ".bin", p);
    }
    // fuzz_salient_binary: table byte, rows, cols (2 bytes LE), then a valid serialized matrix of
    // 2 x 40 (blocks of 24 columns with 5 salient and 16 with none; with and without the split)
    std::filesystem::create_directories(dir + "/fuzz_salient_binary");
    for (const bool split : {false, true}) {
        std::vector<std::int32_t> source;
        for (int c = 0; c < 24; ++c) source.push_back(39 - c);
        for (int c = 24; c < 32; ++c) source.push_back(-1);
        for (int c = 0; c < 16; ++c) source.push_back(c);
        const std::vector<lowbit::salient_binary_block> blocks{{24, 5}, {16, 0}};
        const Eigen::Index words = 3 + (split ? 3 : 1);
        std::vector<std::uint16_t> codes(static_cast<std::size_t>(2 * words));
        for (std::size_t k = 0; k < codes.size(); ++k) codes[k] = static_cast<std::uint16_t>(0x9E37u * (k + 1));
        lowbit::vector_f table(2 * 2 * 8); // fp16-exact
        for (Eigen::Index e = 0; e < table.size(); ++e) table(e) = static_cast<float>(e - 16) / 16.0f;
        const lowbit::salient_binary_matrix m(2, 40, blocks, source, split, codes, table);
        std::vector<std::byte> p{std::byte{0}, std::byte{1}, std::byte{39}, std::byte{0}};
        for (const std::uint8_t b : m.bytes()) p.push_back(static_cast<std::byte>(b));
        save(dir + "/fuzz_salient_binary/salient_" + std::to_string(split) + ".bin", p);
    }
    // fuzz_salient_ternary: parameter byte, rows, cols (2 bytes LE), then a valid serialized matrix of
    // 2 x 40 (blocks of 24 columns with 5 salient and 16 with none), and one with every column salient
    std::filesystem::create_directories(dir + "/fuzz_salient_ternary");
    for (const int salient : {5, 24}) {
        std::vector<std::int32_t> source;
        for (int c = 0; c < 24; ++c) source.push_back(39 - c);
        for (int c = 24; c < 32; ++c) source.push_back(-1);
        for (int c = 0; c < 16; ++c) source.push_back(c);
        const std::vector<lowbit::salient_ternary_block> blocks{{24, salient}, {16, 0}};
        // per row: chunk 0 of block 0 (P, N, G, P1, N1), chunk 1 (3 words, or 5 if it holds salient
        // columns; lanes 0..7 real), block 1's chunk (3 words)
        const bool second = salient > 16;
        std::vector<std::uint16_t> row{0x1234, 0x4100, 0x0F0F, 0x0011, 0x0006, 0x0081, 0x0042, 0x00F0};
        if (second) {
            row.push_back(0x0001);
            row.push_back(0x0002);
        }
        for (const std::uint16_t v : {0x8001, 0x0100, 0xFF00}) row.push_back(v);
        std::vector<std::uint16_t> codes(row);
        codes.insert(codes.end(), row.begin(), row.end());
        lowbit::vector_f params(2 * 2 * 10); // fp16-exact
        for (Eigen::Index e = 0; e < params.size(); ++e) params(e) = static_cast<float>(e - 20) / 16.0f;
        const lowbit::salient_ternary_matrix m(2, 40, blocks, source, codes, params);
        std::vector<std::byte> p{std::byte{0}, std::byte{1}, std::byte{39}, std::byte{0}};
        for (const std::uint8_t b : m.bytes()) p.push_back(static_cast<std::byte>(b));
        save(dir + "/fuzz_salient_ternary/salient_" + std::to_string(salient) + ".bin", p);
    }
    return 0;
}
