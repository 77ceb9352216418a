#pragma once
/// \file io/mapped_file.hpp
/// A read-only view of a whole file: memory-mapped on POSIX systems (open, fstat, mmap PROT_READ
/// MAP_PRIVATE; the descriptor is closed once mapped), read into memory elsewhere or on request.
///
/// Pages are loaded by the OS on first touch, so opening a large checkpoint costs a system call,
/// not a read of the file. The mapping is private and read-only: the bytes never change through it.
/// The caller must not truncate the file in place while it is mapped (POSIX delivers SIGBUS on
/// access past the new end); replacing it by rename (as lowbit's writers do) is safe, the mapping
/// keeps the old contents.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <utility>

/// LOWBIT_HAS_MMAP: 1 where mapped_file uses POSIX mmap (Unix-like systems), 0 where it reads.
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define LOWBIT_HAS_MMAP 1
#else
#define LOWBIT_HAS_MMAP 0
#endif

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// Read-only bytes of a whole file (see the file comment). RAII, movable, not copyable; the bytes
/// stay at the same address for the object's lifetime, moves included.
class mapped_file {
public:
    /// How the bytes are obtained.
    enum class mode {
        map, ///< mmap where available (POSIX), otherwise read
        read ///< read the whole file into memory (owned buffer)
    };

    /// An empty object (no file, zero bytes).
    mapped_file() noexcept = default;

    /// Opens `path` (a regular file) and maps or reads it. An empty file gives zero bytes and no
    /// mapping. O(1) when mapped, O(size) when read.
    /// \throws format_error "lowbit: mapped_file: cannot <step> '<path>': <errno text>" (missing,
    /// unreadable, not a regular file, too large for the address space, mmap failure).
    explicit mapped_file(const std::filesystem::path& path, mode m = mode::map) : path_(path) {
#if LOWBIT_HAS_MMAP
        if (m == mode::map) {
            open_mapped();
            return;
        }
#endif
        (void)m;
        open_read();
    }

    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;
    /// Takes over `o`'s bytes (their address is unchanged); `o` becomes empty.
    mapped_file(mapped_file&& o) noexcept
        : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)),
          mapped_(std::exchange(o.mapped_, false)), owned_(std::move(o.owned_)) {}
    /// Releases this object's bytes and takes over `o`'s.
    mapped_file& operator=(mapped_file&& o) noexcept {
        if (this != &o) {
            release();
            path_ = std::move(o.path_);
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
            mapped_ = std::exchange(o.mapped_, false);
            owned_ = std::move(o.owned_);
        }
        return *this;
    }
    /// Unmaps or frees the bytes.
    ~mapped_file() { release(); }

    /// The file's bytes (empty for an empty file or a default-constructed object).
    [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
    /// First byte (nullptr when empty).
    [[nodiscard]] const std::byte* data() const noexcept { return data_; }
    /// Size in bytes.
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    /// True if there are no bytes.
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
    /// True if the bytes are an mmap of the file (false when read, empty, or moved from).
    [[nodiscard]] bool is_mapped() const noexcept { return mapped_; }
    /// The path the object was opened from (empty for a default-constructed object).
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

private:
    [[noreturn]] void fail(const char* step, int err) const {
        throw format_error(std::string("lowbit: mapped_file: cannot ") + step + " '" + path_.string() +
                           "': " + std::generic_category().message(err));
    }

#if LOWBIT_HAS_MMAP
    void open_mapped() {
        int fd;
        do {
            fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
        } while (fd < 0 && errno == EINTR);
        if (fd < 0) fail("open", errno);
        struct closer {
            int fd;
            ~closer() { ::close(fd); }
        } close_fd{fd};
        struct stat st {};
        if (::fstat(fd, &st) != 0) fail("stat", errno);
        if (!S_ISREG(st.st_mode)) fail("map", S_ISDIR(st.st_mode) ? EISDIR : ENODEV);
        if (st.st_size < 0 || static_cast<std::uintmax_t>(st.st_size) > SIZE_MAX) fail("map", EFBIG);
        const auto n = static_cast<std::size_t>(st.st_size);
        if (n == 0) return;
        void* p = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) fail("map", errno);
        data_ = static_cast<const std::byte*>(p);
        size_ = n;
        mapped_ = true;
    }
#endif

    void open_read() {
        std::error_code ec;
        const auto st = std::filesystem::status(path_, ec);
        if (ec || !std::filesystem::exists(st)) fail("open", ec ? ec.value() : ENOENT);
        if (!std::filesystem::is_regular_file(st)) fail("read", std::filesystem::is_directory(st) ? EISDIR : ENODEV);
        std::ifstream f(path_, std::ios::binary | std::ios::ate);
        if (!f) fail("open", errno ? errno : EACCES);
        const auto end = f.tellg();
        if (end < 0) fail("read", EIO);
        const auto n = static_cast<std::size_t>(end);
        if (n == 0) return;
        owned_ = std::make_unique<std::byte[]>(n);
        f.seekg(0);
        if (!f.read(reinterpret_cast<char*>(owned_.get()), static_cast<std::streamsize>(n))) fail("read", EIO);
        data_ = owned_.get();
        size_ = n;
    }

    void release() noexcept {
#if LOWBIT_HAS_MMAP
        if (mapped_) ::munmap(const_cast<std::byte*>(data_), size_);
#endif
        owned_.reset();
        data_ = nullptr;
        size_ = 0;
        mapped_ = false;
    }

    std::filesystem::path path_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    bool mapped_ = false;
    std::unique_ptr<std::byte[]> owned_;
};

} // namespace io
LOWBIT_END_NAMESPACE
