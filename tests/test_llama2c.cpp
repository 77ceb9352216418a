// Tests for lowbit/io/llama2c.hpp on the real stories260K checkpoint and corrupted copies of it.
#include <lowbit/io/llama2c.hpp>

#include <doctest/doctest.h>

#include "models.hpp"

#include <cstring>

namespace {
const std::vector<std::byte>& real_bytes() {
    static const auto bytes = lowbit::io::read_file_bytes(lowbit_test::stories260k("stories260K.bin"));
    return bytes;
}
void set_header(std::vector<std::byte>& b, int field, std::int32_t v) { std::memcpy(b.data() + 4 * field, &v, 4); }
} // namespace

TEST_CASE("reads the real stories260K checkpoint") {
    const auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    const auto& c = ck.config;
    CHECK(c.dim == 64);
    CHECK(c.hidden_dim == 172);
    CHECK(c.n_layers == 5);
    CHECK(c.n_heads == 8);
    CHECK(c.n_kv_heads == 4);
    CHECK(c.vocab_size == 512);
    CHECK(c.seq_len == 512);
    CHECK(c.shared_classifier);
    CHECK(c.kv_dim() == 32);
    REQUIRE(ck.layers.size() == 5);
    CHECK(ck.layers[4].wk.rows() == 32);
    CHECK(ck.layers[4].w2.cols() == 172);
    // Independent check of the offsets: the first float after the header is token_embedding[0][0],
    // and rms_final sits right before the 2*512*4 RoPE floats at the end of the file.
    const auto& b = real_bytes();
    float first, last_rms;
    std::memcpy(&first, b.data() + 28, 4);
    std::memcpy(&last_rms, b.data() + b.size() - 4 * (512 * 8) - 4, 4);
    CHECK(ck.token_embedding(0, 0) == first);
    CHECK(ck.rms_final(63) == last_rms);
    auto lin = lowbit::io::linear_weights(const_cast<lowbit::io::llama2c_checkpoint&>(ck));
    CHECK(lin.size() == 35);
    CHECK(lin[0].name == "layers.0.wq");
}

TEST_CASE("serialize/parse round trip is exact") {
    const auto ck = lowbit::io::parse_llama2c(real_bytes());
    const auto again = lowbit::io::serialize_llama2c(ck);
    REQUIRE(again.size() == real_bytes().size());
    const auto ck2 = lowbit::io::parse_llama2c(again);
    CHECK(ck2.token_embedding == ck.token_embedding);
    CHECK(ck2.layers[3].w3 == ck.layers[3].w3);
    CHECK(ck2.rms_final == ck.rms_final);
}

TEST_CASE("truncated files give a clear format_error") {
    const auto& b = real_bytes();
    for (std::size_t cut : {std::size_t{0}, std::size_t{10}, std::size_t{28}, b.size() / 2, b.size() - 1}) {
        std::vector<std::byte> t(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(cut));
        CHECK_THROWS_AS(lowbit::io::parse_llama2c(t), lowbit::format_error);
    }
    std::vector<std::byte> t(b.begin(), b.end() - 4);
    CHECK_THROWS_WITH(lowbit::io::parse_llama2c(t), doctest::Contains("truncated"));
    auto longer = b;
    longer.push_back(std::byte{0});
    CHECK_THROWS_WITH(lowbit::io::parse_llama2c(longer), doctest::Contains("trailing bytes"));
}

TEST_CASE("a wrong header gives a clear format_error") {
    auto b = real_bytes();
    set_header(b, 0, -64);
    CHECK_THROWS_WITH(lowbit::io::parse_llama2c(b), doctest::Contains("'dim'"));
    b = real_bytes();
    set_header(b, 3, 7); // 64 % 7 != 0
    CHECK_THROWS_WITH(lowbit::io::parse_llama2c(b), doctest::Contains("multiple of n_heads"));
    b = real_bytes();
    set_header(b, 4, 3); // 8 % 3 != 0
    CHECK_THROWS_WITH(lowbit::io::parse_llama2c(b), doctest::Contains("n_kv_heads"));
    b = real_bytes();
    set_header(b, 1, 1 << 30);
    CHECK_THROWS_WITH(lowbit::io::parse_llama2c(b), doctest::Contains("out of range"));
}

TEST_CASE("sizes that do not add up give a clear format_error") {
    auto b = real_bytes();
    set_header(b, 1, 171); // hidden_dim off by one: the file no longer matches
    CHECK_THROWS_WITH(lowbit::io::parse_llama2c(b), doctest::Contains("does not match the header"));
    b = real_bytes();
    set_header(b, 5, -512); // separate classifier announced but absent
    CHECK_THROWS_AS(lowbit::io::parse_llama2c(b), lowbit::format_error);
}

TEST_CASE("non-finite weights and missing files are refused") {
    auto b = real_bytes();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(b.data() + 28 + 4 * 100, &nan, 4);
    CHECK_THROWS_WITH(lowbit::io::parse_llama2c(b), doctest::Contains("NaN or Inf"));
    CHECK_THROWS_AS(lowbit::io::read_llama2c("/nonexistent/model.bin"), lowbit::format_error);
}
