// Tests for lowbit/io/mapped_file.hpp. Oracles: files the test writes with std::ofstream (known
// bytes), POSIX facts (a missing path gives ENOENT, a folder EISDIR), and the mapping's promise that
// a rename over the file does not change the mapped bytes.
#include <lowbit/io/mapped_file.hpp>

#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace {

using lowbit::io::mapped_file;
namespace fs = std::filesystem;

struct temp_dir {
    fs::path path = fs::temp_directory_path() / ("lowbit_test_mapped_" + std::to_string(::getpid()));
    temp_dir() { fs::create_directories(path); }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

void write_file(const fs::path& p, const std::string& s) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(s.data(), static_cast<std::streamsize>(s.size()));
}

std::string as_string(const mapped_file& m) { return std::string(reinterpret_cast<const char*>(m.data()), m.size()); }

std::string error_of(const fs::path& p, mapped_file::mode how) {
    try {
        mapped_file m(p, how);
    } catch (const lowbit::format_error& e) {
        return e.what();
    }
    return "";
}

} // namespace

TEST_CASE("a file is mapped read-only, or read on request, with the same bytes") {
    temp_dir t;
    std::string content(100'003, '\0');
    for (std::size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>((i * 131 + 7) & 0xFF);
    write_file(t.path / "a.bin", content);
    const mapped_file m(t.path / "a.bin");
#if LOWBIT_HAS_MMAP
    CHECK(m.is_mapped());
#endif
    CHECK(m.size() == content.size());
    CHECK(!m.empty());
    CHECK(m.bytes().size() == content.size());
    CHECK(as_string(m) == content);
    CHECK(m.path() == t.path / "a.bin");
    const mapped_file r(t.path / "a.bin", mapped_file::mode::read);
    CHECK(!r.is_mapped());
    CHECK(as_string(r) == content);
}

TEST_CASE("moves keep the bytes at their address; the moved-from object is empty") {
    temp_dir t;
    write_file(t.path / "b.bin", "hello, mapping");
    for (auto how : {mapped_file::mode::map, mapped_file::mode::read}) {
        mapped_file a(t.path / "b.bin", how);
        const std::byte* p = a.data();
        mapped_file b(std::move(a));
        CHECK(b.data() == p);
        CHECK(as_string(b) == "hello, mapping");
        CHECK(a.empty());
        CHECK(a.data() == nullptr);
        CHECK(!a.is_mapped());
        mapped_file c;
        CHECK(c.empty());
        c = std::move(b);
        CHECK(c.data() == p);
        CHECK(b.empty());
        c = mapped_file(t.path / "b.bin", how); // releases the old bytes, takes new ones
        CHECK(as_string(c) == "hello, mapping");
        auto& self = c;
        c = std::move(self); // self-move leaves it intact
        CHECK(as_string(c) == "hello, mapping");
    }
}

TEST_CASE("empty files give zero bytes, no mapping") {
    temp_dir t;
    write_file(t.path / "empty", "");
    for (auto how : {mapped_file::mode::map, mapped_file::mode::read}) {
        const mapped_file m(t.path / "empty", how);
        CHECK(m.empty());
        CHECK(m.size() == 0);
        CHECK(m.bytes().empty());
        CHECK(!m.is_mapped());
    }
}

TEST_CASE("errors are format_error naming the path and the errno text") {
    temp_dir t;
    for (auto how : {mapped_file::mode::map, mapped_file::mode::read}) {
        const auto missing = error_of(t.path / "nope.bin", how);
        CAPTURE(missing);
        CHECK(missing.find((t.path / "nope.bin").string()) != std::string::npos);
        CHECK(missing.find(std::generic_category().message(ENOENT)) != std::string::npos);
        CHECK(missing.rfind("lowbit: mapped_file: cannot ", 0) == 0);
        const auto dir = error_of(t.path, how);
        CAPTURE(dir);
        CHECK(dir.find(t.path.string()) != std::string::npos);
        CHECK(dir.find(std::generic_category().message(EISDIR)) != std::string::npos);
    }
#if LOWBIT_HAS_MMAP
    if (::geteuid() != 0) { // root reads anything
        write_file(t.path / "secret", "x");
        fs::permissions(t.path / "secret", fs::perms::none);
        const auto denied = error_of(t.path / "secret", mapped_file::mode::map);
        CHECK(denied.find(std::generic_category().message(EACCES)) != std::string::npos);
    }
#endif
}

TEST_CASE("replacing the file by rename does not change mapped bytes") {
    temp_dir t;
    write_file(t.path / "c.bin", "old contents");
    const mapped_file m(t.path / "c.bin");
    write_file(t.path / "c.tmp", "new contents, longer");
    fs::rename(t.path / "c.tmp", t.path / "c.bin");
    CHECK(as_string(m) == "old contents");
    CHECK(as_string(mapped_file(t.path / "c.bin")) == "new contents, longer");
}
