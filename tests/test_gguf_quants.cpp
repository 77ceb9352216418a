// Tests for lowbit/io/gguf_quants.hpp. Oracle: the `gguf` PyPI package (gguf.quants.quantize and
// gguf.quants.dequantize) through the fixture of tests/data/gguf_fixtures.py (support/gguf_fixture.hpp):
// lowbit's quantizers must produce the package's bytes and its dequantizers the package's floats,
// bit for bit, on random, adversarial (ties, rounding boundaries, tiny values, powers of two) and real
// llama-21M-en rows; random blocks of every dequantizable type (K-quants included).
#include <lowbit/io/gguf.hpp>
#include <lowbit/io/gguf_quants.hpp>

#include "gguf_fixture.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <random>

namespace {

using namespace lowbit::io;

std::uint32_t bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

const gguf_file& fixture_file() {
    static const gguf_file g = [] {
        const auto& f = lowbit_test::fixture();
        MESSAGE("gguf fixture: " << f.path.string() << std::string(f.generated ? " (generated now by the gguf package)" : " (committed, small)"));
        return gguf_file::open(f.path);
    }();
    return g;
}

std::vector<float> floats(const gguf_tensor& t) {
    REQUIRE(t.type == ggml_type::f32);
    return t.to_float();
}

} // namespace

TEST_CASE("gguf_quants: type table and row sizes") {
    CHECK(ggml_row_bytes(ggml_type::q4_0, 64) == 36);
    CHECK(ggml_row_bytes(ggml_type::tq1_0, 512) == 108);
    CHECK(ggml_row_bytes(ggml_type::mxfp4, 32) == 17);
    CHECK(ggml_row_bytes(ggml_type::q6_k, 256) == 210);
    CHECK_THROWS_AS((void)ggml_row_bytes(ggml_type::q8_0, 33), lowbit::shape_error);
    CHECK(ggml_type_from_name("tq2_0") == ggml_type::tq2_0);
    CHECK_THROWS_AS((void)ggml_type_from_name("Q9_9"), lowbit::invalid_argument);
    CHECK(find_ggml_type(31) == nullptr);
    CHECK(std::string(ggml_type_name(ggml_type::mxfp4)) == "MXFP4");
}

TEST_CASE("gguf_quants: quantizers produce the gguf package's bytes") {
    const auto& g = fixture_file();
    for (const char* name : {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "TQ1_0", "TQ2_0", "MXFP4"}) {
        CAPTURE(name);
        const ggml_type t = ggml_type_from_name(name);
        const auto& in = g.tensor(std::string("in.") + name);
        const auto& q = g.tensor(std::string("q.") + name);
        REQUIRE(q.type == t);
        const auto x = floats(in);
        const auto mine = quantize(t, x);
        REQUIRE(mine.size() == q.bytes.size());
        std::size_t diff = 0, first = mine.size();
        for (std::size_t i = 0; i < mine.size(); ++i)
            if (mine[i] != q.bytes[i]) {
                ++diff;
                first = std::min(first, i);
            }
        CAPTURE(first);
        CHECK(diff == 0);
    }
}

TEST_CASE("gguf_quants: dequantizers equal the gguf package's floats") {
    const auto& g = fixture_file();
    auto check = [&](const std::string& qn, const std::string& dn) {
        CAPTURE(qn);
        const auto& q = g.tensor(qn);
        const auto ref = floats(g.tensor(dn));
        const auto mine = q.to_float();
        REQUIRE(mine.size() == ref.size());
        std::size_t diff = 0;
        for (std::size_t i = 0; i < ref.size(); ++i) diff += bits(mine[i]) != bits(ref[i]);
        CHECK(diff == 0);
    };
    for (const char* name : {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "TQ1_0", "TQ2_0", "MXFP4"})
        check(std::string("q.") + name, std::string("deq.") + name);
    for (const char* name : {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0", "MXFP4"})
        check(std::string("rq.") + name, std::string("rdeq.") + name);
}

TEST_CASE("gguf_quants: round trips and errors") {
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(512);
    for (auto& v : x) v = nd(rng);
    // Q8_0 error ≤ d/2 per block; ternary codes are exact for ternary input
    const auto q8 = dequantize(ggml_type::q8_0, quantize(ggml_type::q8_0, x), x.size());
    for (std::size_t b = 0; b < 16; ++b) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        for (int j = 0; j < 32; ++j) CHECK(std::fabs(q8[b * 32 + j] - x[b * 32 + j]) <= amax / 127.0f * 0.51f + 1e-3f);
    }
    std::vector<float> tern(512);
    for (std::size_t i = 0; i < tern.size(); ++i) tern[i] = 0.25f * static_cast<float>(static_cast<int>(i % 3) - 1);
    for (auto t : {ggml_type::tq1_0, ggml_type::tq2_0}) CHECK(dequantize(t, quantize(t, tern), 512) == tern);
    std::vector<float> bad(32, 1.0f);
    bad[3] = std::nanf("");
    CHECK_THROWS_AS((void)quantize(ggml_type::q8_0, bad), lowbit::numeric_error);
    CHECK_THROWS_AS((void)quantize(ggml_type::q4_k, x), lowbit::invalid_argument);
    std::vector<std::byte> few(10);
    std::vector<float> out(32);
    CHECK_THROWS_AS(dequantize_row(ggml_type::q8_0, few, out), lowbit::shape_error);
    std::vector<std::byte> iq(66);
    std::vector<float> out256(256);
    CHECK_THROWS_AS(dequantize_row(ggml_type::iq2_xxs, iq, out256), lowbit::invalid_argument);
}
