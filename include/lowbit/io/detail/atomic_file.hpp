#pragma once
/// \file io/detail/atomic_file.hpp
/// The one atomic file writer of lowbit's file formats (safetensors_writer, gguf_writer and, through
/// them, save_quantized_model): the bytes go to a temporary file in the target's own folder, which
/// is renamed over the target only once every byte was written and flushed. A reader of the target
/// sees either the previous file or the complete new one; a failure anywhere — the caller's writer
/// throwing midway, a full disk or a file-size limit, a rename refused — removes the temporary and
/// leaves the previous file byte-identical (or no file, if there was none).
///
/// The temporary is named `<target file name>.lowbit-tmp.<unique>` so that two writers of one
/// target, or of targets in one folder, never share it; the rename is the operating system's
/// (atomic on POSIX file systems when both names are in one folder, as here). The data is not
/// forced to stable storage (no fsync): the guarantee is against failures of the writing process,
/// not against power loss.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io::detail {

/// A fresh temporary path beside `path`: `<name>.lowbit-tmp.<unique>` (unique within the process
/// by a counter, across processes by a clock reading and an address).
[[nodiscard]] inline std::filesystem::path atomic_temporary_path(const std::filesystem::path& path) {
    static std::atomic<std::uint64_t> counter{0};
    const auto tick = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    const auto here = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&counter));
    std::uint64_t h = tick ^ (here * 0x9E3779B97F4A7C15ull) ^ (counter.fetch_add(1) << 48);
    h ^= h >> 29;
    std::filesystem::path tmp = path;
    tmp += ".lowbit-tmp." + std::to_string(h % 1000000007ull);
    return tmp;
}

/// Writes the file `path` atomically (see the file comment): `write` receives a binary output
/// stream on the temporary file and writes the whole content; then the stream is flushed and
/// closed, its state checked, and the temporary renamed over `path`. `what` names the caller in
/// error messages ("safetensors", "gguf").
/// \throws format_error (the temporary cannot be created, written or renamed; the temporary is
///         removed and `path` is untouched), or whatever `write` throws (same clean-up).
inline void write_file_atomically(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write,
                                  std::string_view what) {
    const std::filesystem::path tmp = atomic_temporary_path(path);
    auto discard = [&tmp] {
        std::error_code ec;
        std::filesystem::remove(tmp, ec);
    };
    const std::string who = "lowbit: " + std::string(what) + ": ";
    try {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw format_error(who + "cannot create '" + tmp.string() + "' (writing '" + path.string() + "')");
        write(f);
        f.flush();
        if (!f) throw format_error(who + "cannot write '" + tmp.string() + "' (writing '" + path.string() + "')");
        f.close();
        if (!f) throw format_error(who + "cannot close '" + tmp.string() + "' (writing '" + path.string() + "')");
    } catch (...) {
        discard();
        throw;
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        discard();
        throw format_error(who + "cannot rename '" + tmp.string() + "' to '" + path.string() + "': " + ec.message());
    }
}

/// Writes `bytes` as the file `path` atomically. \throws format_error (as above).
inline void write_file_atomically(const std::filesystem::path& path, std::span<const std::byte> bytes, std::string_view what) {
    write_file_atomically(
        path,
        [bytes](std::ostream& o) { o.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())); },
        what);
}

/// The bytes produced by a streaming serializer: `emit(put)` calls `put(const void* p, size_t n)`
/// for every piece of the file in order (the writers' `emit`). O(size).
template <class Emit>
[[nodiscard]] std::vector<std::byte> collect_emitted(Emit&& emit) {
    std::vector<std::byte> out;
    emit([&out](const void* p, std::size_t n) {
        const auto* c = static_cast<const std::byte*>(p);
        out.insert(out.end(), c, c + n);
    });
    return out;
}

/// `write_file_atomically` of what a streaming serializer produces (see `collect_emitted`), without
/// holding the file in memory. \throws format_error (as above), or whatever `emit` throws.
template <class Emit>
void write_emitted_atomically(const std::filesystem::path& path, Emit&& emit, std::string_view what) {
    write_file_atomically(
        path,
        [&emit](std::ostream& o) {
            emit([&o](const void* p, std::size_t n) {
                if (n && o) o.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
            });
        },
        what);
}

} // namespace io::detail
LOWBIT_END_NAMESPACE
