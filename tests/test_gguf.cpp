// Tests for lowbit/io/gguf.hpp (the container). Oracles: a file written by the `gguf` PyPI package's
// GGUFWriter (every metadata type, arrays, nested arrays, tensors of every type; support/gguf_fixture.hpp),
// the package's GGUFReader reading lowbit's writer output (when Python + gguf are available), and
// hand-built corrupt files for each validation rule.
#include <lowbit/io/gguf.hpp>

#include "gguf_fixture.hpp"
#include "write_failure.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace {

using namespace lowbit::io;
using lowbit::format_error;

struct builder {
    std::vector<std::byte> b;
    void raw(const void* p, std::size_t n) {
        const auto* c = static_cast<const std::byte*>(p);
        b.insert(b.end(), c, c + n);
    }
    template <class T>
    builder& put(T v) {
        raw(&v, sizeof v);
        return *this;
    }
    builder& str(const std::string& s) {
        put<std::uint64_t>(s.size());
        raw(s.data(), s.size());
        return *this;
    }
    builder& header(std::uint64_t nt, std::uint64_t nkv, std::uint32_t version = 3) {
        raw("GGUF", 4);
        put<std::uint32_t>(version).put<std::uint64_t>(nt).put<std::uint64_t>(nkv);
        return *this;
    }
    builder& pad(std::size_t a = 32) {
        while (b.size() % a) b.push_back(std::byte{0});
        return *this;
    }
};

/// A valid file: one u32 key, one F32 tensor [4] at offset 0.
builder valid_file() {
    builder f;
    f.header(1, 1);
    f.str("k").put<std::uint32_t>(4).put<std::uint32_t>(7);
    f.str("t").put<std::uint32_t>(1).put<std::uint64_t>(4).put<std::uint32_t>(0).put<std::uint64_t>(0);
    f.pad();
    for (int i = 0; i < 4; ++i) f.put<float>(static_cast<float>(i));
    return f;
}

std::string parse_error(const std::vector<std::byte>& b) {
    try {
        (void)gguf_file::parse(b);
    } catch (const format_error& e) {
        return e.what();
    }
    return "";
}

} // namespace

TEST_CASE("gguf: reads every metadata type written by the gguf package") {
    const auto g = gguf_file::open(lowbit_test::fixture().path);
    CHECK(g.version() == 3);
    CHECK(g.alignment() == 32);
    CHECK(g.get_string("general.architecture") == "lowbit-fixture");
    CHECK(g.at("test.u8").type == gguf_type::u8);
    CHECK(g.get_int("test.u8") == 200);
    CHECK(g.get_int("test.i8") == -100);
    CHECK(g.get_int("test.u16") == 65000);
    CHECK(g.get_int("test.i16") == -32000);
    CHECK(g.get_int("test.u32") == 4000000000LL);
    CHECK(g.get_int("test.i32") == -2000000000LL);
    CHECK(g.get_double("test.f32") == static_cast<double>(0.1f));
    CHECK(std::get<std::uint64_t>(g.at("test.u64").v) == 18000000000000000000ULL);
    CHECK_THROWS_AS((void)g.get_int("test.u64"), format_error); // above 2^63 - 1
    CHECK(g.get_int("test.i64") == -9000000000000000000LL);
    CHECK(g.get_double("test.f64") == -1.25e-300);
    CHECK(g.at("test.bool").as_bool() == true);
    CHECK(g.get_string("test.string") == "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93");
    const auto& a = g.at("test.arr_i32");
    CHECK(a.element == gguf_type::i32);
    REQUIRE(a.as_array().size() == 3);
    CHECK(a.as_array()[1].as_int() == -2);
    const auto& s = g.at("test.arr_str").as_array();
    REQUIRE(s.size() == 3);
    CHECK(s[1].as_string().empty());
    CHECK(s[2].as_string() == "\xc4\xa0the");
    CHECK(g.at("test.arr_bool").as_array()[1].as_bool() == false);
    const auto& n = g.at("test.nested");
    CHECK(n.element == gguf_type::array);
    REQUIRE(n.as_array().size() == 2);
    CHECK(n.as_array()[0].as_array()[1].as_int() == 2);
    CHECK(n.as_array()[1].as_array()[0].as_int() == 3);
    const auto* t = g.find_tensor("q.Q4_0");
    REQUIRE(t != nullptr);
    CHECK(t->type == ggml_type::q4_0);
    CHECK(t->shape.size() == 2);
    CHECK(t->bytes.size() == ggml_row_bytes(ggml_type::q4_0, t->shape[0]) * t->shape[1]);
    CHECK(g.find("absent") == nullptr);
    CHECK_THROWS_WITH_AS((void)g.tensor("absent"), doctest::Contains("tensor 'absent' is missing"), format_error);
}

TEST_CASE("gguf: validation rules") {
    CHECK(parse_error(valid_file().b).empty());
    {
        auto f = valid_file();
        f.b[0] = std::byte{'X'};
        CHECK(parse_error(f.b).find("magic") != std::string::npos);
    }
    for (std::uint32_t v : {1u, 4u, 0x03000000u}) {
        builder f;
        f.header(0, 0, v);
        CHECK(!parse_error(f.b).empty());
    }
    {
        builder f; // kv count the file cannot hold
        f.header(0, 1ULL << 60);
        CHECK(parse_error(f.b).find("metadata count") != std::string::npos);
    }
    {
        builder f; // tensor count overflow
        f.header(~0ULL, 0);
        CHECK(parse_error(f.b).find("tensor count") != std::string::npos);
    }
    {
        builder f; // string length beyond the file
        f.header(0, 1).put<std::uint64_t>(~0ULL).put<std::uint64_t>(0);
        CHECK(parse_error(f.b).find("truncated") != std::string::npos);
    }
    {
        builder f; // array count beyond the file
        f.header(0, 1).str("a").put<std::uint32_t>(9).put<std::uint32_t>(6).put<std::uint64_t>(1ULL << 62);
        CHECK(parse_error(f.b).find("does not fit") != std::string::npos);
    }
    {
        builder f; // unknown value type
        f.header(0, 1).str("a").put<std::uint32_t>(13);
        CHECK(parse_error(f.b).find("unknown value type") != std::string::npos);
    }
    {
        builder f; // bool byte 2
        f.header(0, 1).str("a").put<std::uint32_t>(7).put<std::uint8_t>(2);
        CHECK(parse_error(f.b).find("bool") != std::string::npos);
    }
    {
        builder f; // duplicate key
        f.header(0, 2).str("a").put<std::uint32_t>(0).put<std::uint8_t>(1).str("a").put<std::uint32_t>(0).put<std::uint8_t>(1);
        CHECK(parse_error(f.b).find("duplicate metadata key 'a'") != std::string::npos);
    }
    {
        builder f; // nesting deeper than 8
        f.header(0, 1).str("a").put<std::uint32_t>(9);
        for (int i = 0; i < 10; ++i) f.put<std::uint32_t>(9).put<std::uint64_t>(1);
        CHECK(parse_error(f.b).find("nested") != std::string::npos);
    }
    {
        builder f; // alignment not a power of two
        f.header(0, 1).str("general.alignment").put<std::uint32_t>(4).put<std::uint32_t>(24);
        CHECK(parse_error(f.b).find("power of two") != std::string::npos);
    }
    auto tensor_file = [](std::uint32_t nd, std::vector<std::uint64_t> dims, std::uint32_t type, std::uint64_t off,
                          std::size_t data, const std::string& name2 = "") {
        builder f;
        f.header(name2.empty() ? 1 : 2, 0);
        f.str("t").put<std::uint32_t>(nd);
        for (auto d : dims) f.put<std::uint64_t>(d);
        f.put<std::uint32_t>(type).put<std::uint64_t>(off);
        if (!name2.empty()) f.str(name2).put<std::uint32_t>(1).put<std::uint64_t>(4).put<std::uint32_t>(0).put<std::uint64_t>(0);
        f.pad();
        for (std::size_t i = 0; i < data; ++i) f.b.push_back(std::byte{0});
        return f.b;
    };
    CHECK(parse_error(tensor_file(1, {4}, 0, 0, 16)).empty());
    CHECK(parse_error(tensor_file(5, {1, 1, 1, 1, 1}, 0, 0, 16)).find("n_dims") != std::string::npos);
    CHECK(parse_error(tensor_file(2, {1ULL << 40, 1ULL << 40}, 0, 0, 16)).find("overflows") != std::string::npos);
    CHECK(parse_error(tensor_file(1, {1ULL << 63}, 0, 0, 16)).find("2^63") != std::string::npos);
    CHECK(parse_error(tensor_file(1, {4}, 31, 0, 16)).find("unknown ggml type 31") != std::string::npos);
    CHECK(parse_error(tensor_file(1, {33}, 8, 0, 64)).find("block size") != std::string::npos);
    CHECK(parse_error(tensor_file(1, {4}, 0, 8, 64)).find("alignment") != std::string::npos);
    CHECK(parse_error(tensor_file(1, {4}, 0, 32, 16)).find("outside") != std::string::npos);
    CHECK(parse_error(tensor_file(1, {4}, 0, 0, 8)).find("outside") != std::string::npos);
    CHECK(parse_error(tensor_file(1, {4}, 0, ~0ULL - 31, 16)).find("outside") != std::string::npos);
    CHECK(parse_error(tensor_file(1, {4}, 0, 0, 16, "t")).find("duplicate tensor name 't'") != std::string::npos);
    CHECK(parse_error(tensor_file(1, {8}, 0, 0, 32, "u")).find("overlap") != std::string::npos);
    // every truncation of a valid file is refused cleanly
    const auto v = valid_file().b;
    for (std::size_t n = 0; n < v.size(); ++n) {
        std::vector<std::byte> cut(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n));
        CHECK(!parse_error(cut).empty());
    }
}

TEST_CASE("gguf: writer round trip, atomic write, and the gguf package reads it") {
    gguf_writer w;
    w.set("general.architecture", gguf_value::string("llama"));
    w.set("a.u8", gguf_value::of(gguf_type::u8, 255));
    w.set("a.i16", [] { gguf_value v; v.type = gguf_type::i16; v.v = std::int64_t{-5}; return v; }());
    w.set("a.f32", gguf_value::f32(1.5f));
    w.set("a.bool", gguf_value::boolean(false));
    w.set("a.strs", gguf_value::strings({"x", "y z"}));
    w.set("a.i32s", gguf_value::i32s({3, -4}));
    w.set("a.u8", gguf_value::of(gguf_type::u8, 7)); // replace keeps position
    CHECK_THROWS_AS(w.set("", gguf_value::u32(1)), lowbit::invalid_argument);
    CHECK_THROWS_AS(w.set("bad", gguf_value::array(gguf_type::u32, {gguf_value::i32(1)})), lowbit::invalid_argument);
    std::vector<float> x(64);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = 0.01f * static_cast<float>(i) - 0.3f;
    w.add_float_tensor("w.q8", ggml_type::q8_0, {32, 2}, x);
    w.add_float_tensor("w.f32", ggml_type::f32, {64}, x);
    CHECK_THROWS_AS(w.add_float_tensor("w.f32", ggml_type::f32, {64}, x), lowbit::invalid_argument);
    CHECK_THROWS_AS(w.add_tensor("w.bad", ggml_type::q8_0, {32}, std::vector<std::byte>(33)), lowbit::shape_error);

    lowbit_test::temp_dir dir;
    const auto path = dir.path / "w.gguf";
    w.write(path);
    CHECK(lowbit_test::leftover_temporaries(dir.path).empty());
    const auto g = gguf_file::open(path);
    CHECK(g.metadata().size() == 7);
    CHECK(g.metadata()[1].first == "a.u8");
    CHECK(g.get_int("a.u8") == 7);
    CHECK(g.get_int("a.i16") == -5);
    CHECK(g.get_double("a.f32") == 1.5);
    CHECK(g.at("a.strs").as_array()[1].as_string() == "y z");
    CHECK(g.tensor("w.f32").to_float() == x);
    const auto& q = g.tensor("w.q8");
    CHECK(q.shape == std::vector<std::uint64_t>{32, 2});
    CHECK(q.offset % 32 == 0);
    // a failed write leaves nothing behind
    CHECK_THROWS_AS(w.write(dir.path / "missing-dir" / "x.gguf"), format_error);
    CHECK(!std::filesystem::exists(dir.path / "missing-dir"));

    const std::string py = lowbit_test::gguf_python();
    if (py.empty()) {
        MESSAGE("Python with gguf not found (set LOWBIT_GGUF_PYTHON): the gguf package's reader check is skipped");
        return;
    }
    const auto dump = dir.path / "dump.txt";
    const std::string cmd = "'" + py + "' '" + (lowbit_test::test_data_dir() / "gguf_fixtures.py").string() + "' --dump '" +
                            path.string() + "' > '" + dump.string() + "' 2>&1";
    REQUIRE(std::system(cmd.c_str()) == 0);
    std::ifstream in(dump);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string s = ss.str();
    CAPTURE(s);
    CHECK(s.find("kv\tgeneral.architecture\tSTRING\t\"llama\"") != std::string::npos);
    CHECK(s.find("kv\ta.u8\tUINT8\t7") != std::string::npos);
    CHECK(s.find("kv\ta.i16\tINT16\t-5") != std::string::npos);
    CHECK(s.find("kv\ta.f32\tFLOAT32\t1.5") != std::string::npos);
    CHECK(s.find("kv\ta.bool\tBOOL\tfalse") != std::string::npos);
    CHECK(s.find("kv\ta.strs\tARRAY\t[\"x\", \"y z\"]") != std::string::npos);
    CHECK(s.find("kv\ta.i32s\tARRAY\t[3, -4]") != std::string::npos);
    CHECK(s.find("tensor\tw.q8\tQ8_0\t32,2\t") != std::string::npos);
    CHECK(s.find("tensor\tw.f32\tF32\t64\t") != std::string::npos);
}

TEST_CASE("writer: an I/O failure midway (file-size limit) leaves the previous file byte-identical, no temporary") {
    lowbit_test::temp_dir dir;
    const auto path = dir.path / "model.gguf";
    gguf_writer small;
    small.set("general.architecture", gguf_value::string("llama"));
    small.add_float_tensor("a", ggml_type::f32, {4}, std::vector<float>{1, 2, 3, 4});
    small.write(path);
    const auto before = lowbit_test::file_bytes(path);
    gguf_writer big; // header and the first tensors fit, the rest does not
    big.set("general.architecture", gguf_value::string("llama"));
    for (int i = 0; i < 8; ++i)
        big.add_float_tensor("t" + std::to_string(i), ggml_type::f32, {64, 64}, std::vector<float>(64 * 64, static_cast<float>(i)));
    {
        lowbit_test::file_size_limit limit(40000);
        CHECK_THROWS_AS(big.write(path), format_error);
    }
    CHECK(lowbit_test::file_bytes(path) == before);
    CHECK(gguf_file::open(path).tensors().size() == 1);
    CHECK(lowbit_test::leftover_temporaries(dir.path).empty());
    // without the limit the file is replaced, streaming exactly serialize()'s bytes (padding included)
    big.write(path);
    const auto bytes = big.serialize();
    CHECK(lowbit_test::file_bytes(path) == std::vector<char>(reinterpret_cast<const char*>(bytes.data()),
                                                             reinterpret_cast<const char*>(bytes.data()) + bytes.size()));
    CHECK(gguf_file::open(path).tensors().size() == 8);
    CHECK(lowbit_test::leftover_temporaries(dir.path).empty());
}
