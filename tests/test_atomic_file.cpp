// Tests for lowbit/io/detail/atomic_file.hpp, the one atomic writer of the file formats. Oracles: the
// previous file compared byte for byte after each injected failure (the caller's writer throwing
// midway, a real EFBIG from a file-size limit, a missing folder, a rename over a folder), a listing of
// the folder for leftover temporaries, and two threads racing on one target.
#include <lowbit/io/detail/atomic_file.hpp>

#include "test_files.hpp"
#include "write_failure.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using lowbit::io::detail::write_file_atomically;
using lowbit_test::file_bytes;
using lowbit_test::leftover_temporaries;

std::vector<std::byte> bytes_of(const std::string& s) {
    std::vector<std::byte> b(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) b[i] = static_cast<std::byte>(s[i]);
    return b;
}

std::vector<char> chars(const std::string& s) { return {s.begin(), s.end()}; }

} // namespace

TEST_CASE("write_file_atomically writes the bytes and leaves no temporary") {
    lowbit_test::temp_dir dir("lowbit_test_atomic_write");
    const auto p = dir.path / "out.bin";
    write_file_atomically(p, bytes_of("first"), "test");
    CHECK(file_bytes(p) == chars("first"));
    write_file_atomically(p, [](std::ostream& o) { o << "second, " << 2; }, "test");
    CHECK(file_bytes(p) == chars("second, 2"));
    write_file_atomically(p, std::span<const std::byte>(), "test"); // empty content is a valid file
    CHECK(std::filesystem::exists(p));
    CHECK(std::filesystem::file_size(p) == 0);
    CHECK(leftover_temporaries(dir.path).empty());
    CHECK(lowbit::io::detail::atomic_temporary_path(p) != lowbit::io::detail::atomic_temporary_path(p));
    CHECK(lowbit::io::detail::atomic_temporary_path(p).parent_path() == dir.path);
}

TEST_CASE("a writer that throws midway leaves the previous file byte-identical and no temporary") {
    lowbit_test::temp_dir dir("lowbit_test_atomic_throw");
    const auto p = dir.path / "model.safetensors";
    lowbit_test::put_file(p, "previous content");
    struct injected : std::runtime_error {
        using std::runtime_error::runtime_error;
    };
    CHECK_THROWS_AS(write_file_atomically(
                        p,
                        [](std::ostream& o) {
                            o << std::string(100000, 'x'); // written (to the temporary) before the failure
                            throw injected("tensor 3 is broken");
                        },
                        "test"),
                    injected);
    CHECK(file_bytes(p) == chars("previous content"));
    CHECK(leftover_temporaries(dir.path).empty());
    // the same with lowbit's own error type, on a target that did not exist: still absent
    const auto q = dir.path / "new.gguf";
    CHECK_THROWS_AS(write_file_atomically(q, [](std::ostream& o) { o << "GGUF"; throw lowbit::shape_error("bad shape"); }, "test"),
                    lowbit::shape_error);
    CHECK(!std::filesystem::exists(q));
    CHECK(leftover_temporaries(dir.path).empty());
}

TEST_CASE("an I/O error midway (file-size limit: EFBIG) throws format_error and keeps the previous file") {
    lowbit_test::temp_dir dir("lowbit_test_atomic_efbig");
    const auto p = dir.path / "out.bin";
    lowbit_test::put_file(p, "old");
    {
        lowbit_test::file_size_limit limit(4096);
        const std::string big(1 << 20, 'y');
        try {
            write_file_atomically(p, bytes_of(big), "test");
            FAIL("no error past the file-size limit");
        } catch (const lowbit::format_error& e) {
            CHECK(std::string(e.what()).find("lowbit: test: cannot write") != std::string::npos);
            CHECK(std::string(e.what()).find("out.bin") != std::string::npos);
        }
    }
    CHECK(file_bytes(p) == chars("old"));
    CHECK(leftover_temporaries(dir.path).empty());
}

TEST_CASE("a missing folder or a folder at the target: format_error, nothing created, nothing left") {
    lowbit_test::temp_dir dir("lowbit_test_atomic_paths");
    CHECK_THROWS_AS(write_file_atomically(dir.path / "missing" / "x.bin", bytes_of("x"), "test"), lowbit::format_error);
    CHECK(!std::filesystem::exists(dir.path / "missing"));
    std::filesystem::create_directories(dir.path / "folder" / "keep");
    try {
        write_file_atomically(dir.path / "folder", bytes_of("x"), "test");
        FAIL("rename over a folder succeeded");
    } catch (const lowbit::format_error& e) {
        CHECK(std::string(e.what()).find("cannot rename") != std::string::npos);
    }
    CHECK(std::filesystem::is_directory(dir.path / "folder" / "keep"));
    CHECK(leftover_temporaries(dir.path).empty());
}

TEST_CASE("two threads writing one target: the file is one of the two contents, whole; no temporary") {
    lowbit_test::temp_dir dir("lowbit_test_atomic_race");
    const auto p = dir.path / "out.bin";
    const std::string a(50000, 'a'), b(70000, 'b');
    auto writer = [&p](const std::string& s) {
        for (int i = 0; i < 40; ++i) write_file_atomically(p, bytes_of(s), "test");
    };
    std::thread t1(writer, a), t2(writer, b);
    t1.join();
    t2.join();
    const auto got = file_bytes(p);
    CHECK((got == chars(a) || got == chars(b)));
    CHECK(leftover_temporaries(dir.path).empty());
}
