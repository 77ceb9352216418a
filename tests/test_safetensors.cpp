// Tests for lowbit/io/safetensors.hpp and detail/json.hpp. Oracles: hand-built files from the
// format's specification (byte layout written out in the test), every corruption rule of the
// reference implementation, a byte-exact expected header for a small writer output, and round trips.
#include <lowbit/io/safetensors.hpp>

#include "test_files.hpp"
#include "write_failure.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <unistd.h>
#include <filesystem>
#include <random>

namespace {

using lowbit::format_error;
using lowbit::io::safetensors_file;
using lowbit::io::st_dtype;

std::vector<std::byte> make_file(const std::string& header, std::size_t data_bytes, std::uint64_t n_override = 0) {
    std::vector<std::byte> out(8);
    const std::uint64_t n = n_override ? n_override : header.size();
    for (int k = 0; k < 8; ++k) out[static_cast<std::size_t>(k)] = static_cast<std::byte>((n >> (8 * k)) & 0xFF);
    for (char c : header) out.push_back(static_cast<std::byte>(c));
    for (std::size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<std::byte>(i & 0xFF));
    return out;
}

safetensors_file parse_h(const std::string& header, std::size_t data_bytes) {
    return safetensors_file::parse(make_file(header, data_bytes));
}

std::filesystem::path temp_path(const char* name) {
    return std::filesystem::temp_directory_path() / (std::string("lowbit_test_st_") + std::to_string(::getpid()) + "_" + name);
}

} // namespace

TEST_CASE("a hand-built file parses: dtypes, shapes, offsets, metadata, scalars and empty tensors") {
    const std::string h = R"({"__metadata__":{"format":"pt","lowbit.version":"0"},)"
                          R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                          R"("b":{"dtype":"U8","shape":[5],"data_offsets":[24,29]},)"
                          R"("s":{"dtype":"I16","shape":[],"data_offsets":[29,31]},)"
                          R"("e":{"dtype":"F16","shape":[0,7],"data_offsets":[31,31]},)"
                          R"("n":{"dtype":"F4","shape":[2,3],"data_offsets":[31,34]}}   )";
    const auto f = parse_h(h, 34);
    CHECK(f.size() == 5);
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.metadata().at("lowbit.version") == "0");
    const auto a = f.tensor("a");
    CHECK(a.dtype == st_dtype::F32);
    CHECK(a.shape == std::vector<std::uint64_t>{2, 3});
    CHECK(a.bytes.size() == 24);
    CHECK(static_cast<int>(a.bytes[0]) == 0);
    CHECK(static_cast<int>(f.tensor("b").bytes[0]) == 24);
    CHECK(f.tensor("s").shape.empty());
    CHECK(f.tensor("s").numel() == 1);
    CHECK(f.tensor("e").bytes.empty());
    CHECK(f.tensor("n").bytes.size() == 3);
    CHECK(f.contains("a"));
    CHECK(!f.contains("zz"));
    CHECK_THROWS_AS((void)f.tensor("zz"), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)f.matrix("b"), lowbit::invalid_argument); // U8, not F32
    // offsets need not be in key order
    const auto g = parse_h(R"({"x":{"dtype":"U8","shape":[2],"data_offsets":[3,5]},"y":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", 5);
    CHECK(g.names() == std::vector<std::string>{"y", "x"});
    CHECK(parse_h("{}", 0).size() == 0);
}

TEST_CASE("every corruption rule throws format_error") {
    const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    CHECK_NOTHROW((void)parse_h("{" + ok_entry + "}", 8));
    // JSON syntax, checked on the parser itself (so a structural rule cannot mask a parser bug)
    const char* bad_json[] = {
        "", "{", "{\"a\":1,}", "{\"a\" 1}", "{'a':1}", "{\"a\":01}", "{\"a\":1} x", "{\"a\":tru}",
        "{\"a\":\"\x01\"}", "{\"a\":\"\\x\"}", "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\xC0\xAF\"}",
        "{\"a\":\"\xED\xA0\x80\"}", "{\"a\":\"\xF5\x80\x80\x80\"}", "{\"a\":\"\xE2\x82\"}", "{\"a\":-}", "{\"a\":1.}",
        "{\"a\":1e}", "{/*c*/}", "{\"a\":[1,2,]}", "{\"a\":1,\"a\":2}", "\"\\u12\"", "[1 2]", "{} {}"};
    for (const char* hp : bad_json) {
        const std::string h = hp;
        CAPTURE(h);
        CHECK_THROWS_AS((void)lowbit::detail::json_parser(h, "t").parse_document(), format_error);
        CHECK_THROWS_AS((void)parse_h(h, 8), format_error);
    }
    const char* bad_headers[] = {
        "[]", "null", "\"s\"",
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
        R"({"a":5})",
        R"({"a":{"dtype":"F32","shape":[2]}})",
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})",
        R"({"a":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}})",
        R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})",
        R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})",
        R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
        R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})",
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})",
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})",
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})",
        R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",                        // shape x dtype != span
        R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",    // overflow
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}})",    // > u64
        R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,8]}})",                         // half byte
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})", // overlap
        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})", // gap
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})",                       // not from 0
        R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
        R"({"__metadata__":[],"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
    };
    for (const char* h : bad_headers) {
        CAPTURE(h);
        CHECK_THROWS_AS((void)parse_h(h, 8), format_error);
    }
    // buffer coverage: trailing garbage and truncation
    CHECK_THROWS_AS((void)parse_h("{" + ok_entry + "}", 9), format_error);
    CHECK_THROWS_AS((void)parse_h("{" + ok_entry + "}", 7), format_error);
    // header length field
    CHECK_THROWS_AS((void)safetensors_file::parse(std::vector<std::byte>(7)), format_error);
    CHECK_THROWS_AS((void)safetensors_file::parse(make_file("{}", 0, 100'000'001)), format_error);
    CHECK_THROWS_AS((void)safetensors_file::parse(make_file("{}", 0, 3)), format_error); // beyond the file
    CHECK_THROWS_AS((void)safetensors_file::parse(make_file("{}", 0, UINT64_MAX)), format_error);
    // deep nesting is refused before the stack is at risk
    CHECK_THROWS_AS((void)parse_h(std::string(100, '[') + std::string(100, ']'), 0), format_error);
    // every truncation of a valid file
    lowbit::io::safetensors_writer w;
    w.add("x", lowbit::matrix_f::Ones(3, 4));
    w.set_metadata("k", "v");
    const auto good = w.serialize();
    CHECK_NOTHROW((void)safetensors_file::parse(good));
    for (std::size_t n = 0; n < good.size(); ++n)
        CHECK_THROWS_AS((void)safetensors_file::parse(std::span(good.data(), n)), format_error);
}

TEST_CASE("strict JSON accepts what RFC 8259 allows") {
    using lowbit::detail::json_parser;
    const auto v = json_parser(R"( {"a" : [true, false, null, -0, 1.5e-3, 0.25E+2, "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"]} )", "t")
                       .parse_document();
    REQUIRE(v.keys.size() == 1);
    const auto& arr = v.items[0].items;
    REQUIRE(arr.size() == 7);
    CHECK(arr[0].boolean);
    CHECK(arr[3].text == "-0");
    CHECK(arr[6].text == "x\"\\/\b\f\n\r\t\xC3\xA9\xF0\x9F\x98\x80");
    std::uint64_t u = 0;
    CHECK(!arr[3].as_uint(u));
    CHECK(json_parser("18446744073709551615", "t").parse_document().as_uint(u));
    CHECK(u == UINT64_MAX);
    std::string esc;
    lowbit::detail::json_escape(esc, std::string("a\"b\\c\x01", 6));
    CHECK(esc == "\"a\\\"b\\\\c\\u0001\"");
    CHECK(json_parser(esc, "t").parse_document().text == std::string("a\"b\\c\x01", 6));
}

TEST_CASE("writer: byte-exact layout, sorting by alignment then name, padding, round trip") {
    lowbit::io::safetensors_writer w;
    const std::vector<std::byte> u8{std::byte{1}, std::byte{2}, std::byte{3}};
    w.add("b", st_dtype::U8, {3}, u8);
    lowbit::matrix_f m(1, 2);
    m << 1.0f, -2.0f;
    w.add("a", m);
    const auto bytes = w.serialize();
    const std::string want = R"({"a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})";
    const std::size_t padded = (want.size() + 7) / 8 * 8;
    REQUIRE(bytes.size() == 8 + padded + 11);
    CHECK(static_cast<std::size_t>(bytes[0]) == padded);
    CHECK(std::string(reinterpret_cast<const char*>(bytes.data() + 8), want.size()) == want);
    CHECK(std::string(reinterpret_cast<const char*>(bytes.data() + 8 + want.size()), padded - want.size()) ==
          std::string(padded - want.size(), ' '));
    const auto f = safetensors_file::parse(bytes);
    CHECK(f.matrix("a") == m);
    CHECK(static_cast<int>(f.tensor("b").bytes[2]) == 3);
    // sorting: the 1-byte tensor named "a" goes after 4-byte ones
    lowbit::io::safetensors_writer w2;
    w2.add("a", st_dtype::U8, {3}, u8);
    w2.add("z", m);
    CHECK(safetensors_file::parse(w2.serialize()).names() == std::vector<std::string>{"z", "a"});
    // random float matrices round trip bit-exactly through a file, including names needing escapes
    std::mt19937_64 rng(3);
    std::normal_distribution<float> g;
    lowbit::io::safetensors_writer w3;
    std::vector<lowbit::matrix_f> ms;
    for (int i = 0; i < 5; ++i) {
        lowbit::matrix_f r(1 + static_cast<int>(rng() % 7), 1 + static_cast<int>(rng() % 9));
        for (Eigen::Index k = 0; k < r.size(); ++k) r.data()[k] = g(rng);
        ms.push_back(r);
        w3.add("layers." + std::to_string(i) + ".w \"q\"\n\xC3\xA9", r);
    }
    w3.set_metadata("lowbit.recipe", "rtn4 \"quoted\"");
    const auto path = temp_path("roundtrip.safetensors");
    w3.write(path);
    CHECK(lowbit_test::leftover_temporaries(path.parent_path()).empty());
    const auto f3 = safetensors_file::read(path);
    for (int i = 0; i < 5; ++i) CHECK(f3.matrix("layers." + std::to_string(i) + ".w \"q\"\n\xC3\xA9") == ms[static_cast<std::size_t>(i)]);
    CHECK(f3.metadata().at("lowbit.recipe") == "rtn4 \"quoted\"");
    std::filesystem::remove(path);
}

TEST_CASE("writer: bad input and atomic failure leave nothing on disk") {
    lowbit::io::safetensors_writer w;
    const std::vector<std::byte> four(4);
    CHECK_THROWS_AS(w.add("", st_dtype::U8, {4}, four), lowbit::invalid_argument);
    CHECK_THROWS_AS(w.add("__metadata__", st_dtype::U8, {4}, four), lowbit::invalid_argument);
    CHECK_THROWS_AS(w.add("bad\xFF", st_dtype::U8, {4}, four), lowbit::invalid_argument);
    CHECK_THROWS_AS(w.add("x", st_dtype::U8, {5}, four), lowbit::shape_error);
    CHECK_THROWS_AS(w.add("x", st_dtype::F4, {3}, four), lowbit::shape_error);
    w.add("x", st_dtype::U8, {2, 2}, four);
    CHECK_THROWS_AS(w.add("x", st_dtype::U8, {4}, four), lowbit::invalid_argument);
    CHECK_THROWS_AS(w.set_metadata("k", "\xC0"), lowbit::invalid_argument);
    const auto dir = temp_path("no_such_dir");
    CHECK_THROWS_AS(w.write(dir / "out.safetensors"), format_error);
    CHECK(!std::filesystem::exists(dir));
    // writing over an existing directory fails at rename; the temporary is removed
    const auto d2 = temp_path("a_dir");
    std::filesystem::create_directories(d2 / "keep");
    CHECK_THROWS_AS(w.write(d2), format_error);
    CHECK(lowbit_test::leftover_temporaries(d2.parent_path()).empty());
    std::filesystem::remove_all(d2);
    CHECK_THROWS_AS((void)safetensors_file::read(temp_path("missing.safetensors")), format_error);
    CHECK_THROWS_AS((void)lowbit::io::dtype_from_name("Q4"), format_error);
    CHECK(lowbit::io::dtype_bits(st_dtype::F6_E2M3) == 6);
    CHECK(std::string(lowbit::io::dtype_name(st_dtype::F8_E8M0)) == "F8_E8M0");
}

TEST_CASE("open maps the file: views stay valid in copies, read mode gives the same tensors, errors name the file") {
    lowbit::io::safetensors_writer w;
    lowbit::matrix_f m(2, 3);
    m << 1, 2, 3, 4, 5, -6;
    w.add("m", m);
    const std::vector<std::byte> bf{std::byte{0x80}, std::byte{0x3F}, std::byte{0xC0}, std::byte{0xBF}}; // bf16 1, -1.5
    w.add("bf", st_dtype::BF16, {2}, bf);
    w.set_metadata("format", "pt");
    const auto path = temp_path("mapped.safetensors");
    w.write(path);
    lowbit::io::tensor_view kept;
    {
        auto f = safetensors_file::open(path);
        CHECK(f.path() == path);
        CHECK(f.file_bytes().size() == std::filesystem::file_size(path));
        CHECK(f.matrix("m") == m);
        const auto copy = f; // shares the mapping
        kept = copy.tensor("bf");
        CHECK(copy.tensor("m").bytes.data() == f.tensor("m").bytes.data());
        const auto r = safetensors_file::open(path, lowbit::io::mapped_file::mode::read);
        CHECK(r.names() == f.names());
        CHECK(r.metadata() == f.metadata());
        CHECK(std::equal(r.tensor("m").bytes.begin(), r.tensor("m").bytes.end(), f.tensor("m").bytes.begin()));
        const safetensors_file moved = std::move(f);
        CHECK(moved.tensor("bf").bytes.data() == kept.bytes.data());
    }
    // `kept` came from a copy that is gone; a live object holds the mapping, so re-open to use it
    const auto g = safetensors_file::read(path); // read() maps too
    CHECK(g.to_matrix("bf") == lowbit::matrix_f::Map(std::vector<float>{1.0f, -1.5f}.data(), 1, 2));
    CHECK(g.to_matrix("m") == m);
    CHECK(safetensors_file::parse(g.file_bytes()).path().empty());
    // a truncated file: the message names the file
    {
        std::filesystem::resize_file(path, std::filesystem::file_size(path) - 1);
        try {
            (void)safetensors_file::open(path);
            FAIL("truncated file accepted");
        } catch (const format_error& e) {
            CHECK(std::string(e.what()).find(path.string()) != std::string::npos);
            CHECK(std::string(e.what()).find("truncated") != std::string::npos);
        }
    }
    std::filesystem::remove(path);
    try {
        (void)safetensors_file::open(path);
        FAIL("missing file accepted");
    } catch (const format_error& e) {
        CHECK(std::string(e.what()).find(path.string()) != std::string::npos);
    }
}

TEST_CASE("to_matrix converts BF16, F16, F32, F64, I8, U8 tensors of rank 0-2 and refuses the rest") {
    using lowbit::io::to_matrix;
    using lowbit::io::tensor_view;
    const std::vector<std::byte> b4{std::byte{0x00}, std::byte{0x3C}, std::byte{0x00}, std::byte{0xC0}}; // f16 1, -2
    CHECK(to_matrix(tensor_view{st_dtype::F16, {2, 1}, b4}) == lowbit::matrix_f::Map(std::vector<float>{1, -2}.data(), 2, 1));
    CHECK(to_matrix(tensor_view{st_dtype::F16, {2}, b4}).rows() == 1);
    CHECK(to_matrix(tensor_view{st_dtype::I8, {4}, b4})(0, 3) == -64.0f);
    CHECK(to_matrix(tensor_view{st_dtype::U8, {2, 2}, b4})(1, 1) == 192.0f);
    CHECK(to_matrix(tensor_view{st_dtype::BF16, {}, std::span(b4).first(2)})(0, 0) == lowbit::io::bf16_to_float(0x3C00));
    CHECK(to_matrix(tensor_view{st_dtype::F32, {0, 5}, {}}).cols() == 5);
    CHECK_THROWS_AS((void)to_matrix(tensor_view{st_dtype::U8, {1, 2, 2}, b4}), lowbit::shape_error);
    try {
        (void)to_matrix(tensor_view{st_dtype::I32, {1}, b4});
        FAIL("I32 accepted");
    } catch (const lowbit::invalid_argument& e) {
        CHECK(std::string(e.what()).find("I32") != std::string::npos);
    }
}

TEST_CASE("writer: float matrices stored as BF16 / F16 round to nearest even and read back through to_matrix") {
    lowbit::matrix_f m(2, 2);
    m << 1.0f, 1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8), -65520.0f;
    lowbit::io::safetensors_writer w;
    w.add("b", m, st_dtype::BF16);
    w.add("h", m, st_dtype::F16);
    w.add("f", m, st_dtype::F32);
    CHECK_THROWS_AS(w.add("x", m, st_dtype::I8), lowbit::invalid_argument);
    const auto f = safetensors_file::parse(w.serialize());
    CHECK(f.tensor("b").dtype == st_dtype::BF16);
    CHECK(f.tensor("b").shape == std::vector<std::uint64_t>{2, 2});
    const auto b = f.to_matrix("b");
    CHECK(b(0, 1) == 1.0f);                          // tie to even
    CHECK(b(1, 0) == 1.0f + 4 * std::ldexp(1.0f, -8)); // tie, odd rounds up
    CHECK(b(1, 1) == -65536.0f);
    const auto h = f.to_matrix("h");
    CHECK(h(0, 1) == 1.0f + std::ldexp(1.0f, -8));   // exact in f16
    CHECK(h(1, 1) == -std::numeric_limits<float>::infinity()); // 65520 is the overflow tie
    CHECK(f.to_matrix("f") == m);
}

TEST_CASE("writer: an I/O failure midway (file-size limit) leaves the previous file byte-identical, no temporary") {
    lowbit_test::temp_dir dir("lowbit_test_st_atomic");
    const auto path = dir.path / "model.safetensors";
    lowbit::io::safetensors_writer small;
    small.add("a", lowbit::matrix_f::Constant(2, 2, 1.5f));
    small.write(path);
    const auto before = lowbit_test::file_bytes(path);
    lowbit::io::safetensors_writer big; // header and the first tensors fit, the rest does not
    for (int i = 0; i < 8; ++i) big.add("t" + std::to_string(i), lowbit::matrix_f::Constant(64, 64, static_cast<float>(i)));
    {
        lowbit_test::file_size_limit limit(40000);
        CHECK_THROWS_AS(big.write(path), format_error);
    }
    CHECK(lowbit_test::file_bytes(path) == before);
    CHECK(safetensors_file::read(path).names() == std::vector<std::string>{"a"});
    CHECK(lowbit_test::leftover_temporaries(dir.path).empty());
    // once the limit is gone the same writer replaces the file, streaming exactly serialize()'s bytes
    big.write(path);
    const auto bytes = big.serialize();
    CHECK(lowbit_test::file_bytes(path) == std::vector<char>(reinterpret_cast<const char*>(bytes.data()),
                                                             reinterpret_cast<const char*>(bytes.data()) + bytes.size()));
    CHECK(lowbit_test::leftover_temporaries(dir.path).empty());
}
