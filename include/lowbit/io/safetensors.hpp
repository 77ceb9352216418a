#pragma once
/// \file io/safetensors.hpp
/// Strict safetensors reader and atomic writer (huggingface/safetensors format).
///
/// `safetensors_file::open(path)` memory-maps the file (io/mapped_file.hpp): only the header is
/// parsed; tensor bytes are views into the read-only mapping, loaded by the OS when touched.
/// `parse(bytes)` validates an in-memory buffer (copied). Element types, `tensor_view` and the
/// conversions to float live in io/dtype_convert.hpp; `to_matrix` below builds a float matrix.
///
/// Layout: u64 little-endian N; N bytes of UTF-8 JSON (an object); the data buffer. Each JSON member
/// except `__metadata__` is `"name": {"dtype": D, "shape": [d0, ...], "data_offsets": [b, e]}` with
/// offsets relative to the buffer, e exclusive, row-major little-endian data. `__metadata__` is an
/// object of string → string.
///
/// The reader rejects (format_error, message naming the tensor and the rule):
///  - a file shorter than 8 bytes, N > 100,000,000 (`safetensors_max_header`), 8 + N beyond the file;
///  - a header that is not strict JSON (see detail/json.hpp: duplicate keys, trailing commas,
///    invalid UTF-8, ...), or not an object; trailing whitespace (writers' padding) is allowed;
///  - a tensor entry that is not an object with exactly the keys dtype, shape, data_offsets; an
///    unknown dtype; a shape that is not an array of non-negative integers; offsets that are not two
///    integers b ≤ e; a product of dimensions × dtype size that overflows or differs from e − b
///    (sub-byte dtypes F4/F6 need a whole number of bytes);
///  - offsets that, sorted, are not contiguous from 0 (overlap or gap) or do not end exactly at the
///    end of the file (no trailing garbage);
///  - `__metadata__` that is not an object of strings.
/// Empty tensors (a zero dimension, b = e) and rank-0 scalars are accepted, as in the reference.
///
/// The writer sorts tensors by descending dtype alignment then name, pads the header with spaces to
/// a multiple of 8 bytes, and writes atomically (io/detail/atomic_file.hpp: a temporary file beside
/// `path`, renamed over it once complete): a failure leaves no partial file at `path` (nor the
/// temporary), and a previous file there byte for byte as it was.

#include <lowbit/config.hpp>
#include <lowbit/detail/json.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/detail/atomic_file.hpp>
#include <lowbit/io/dtype_convert.hpp>
#include <lowbit/io/mapped_file.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// Upper bound of the JSON header length (the reference implementation's MAX_HEADER_SIZE).
inline constexpr std::uint64_t safetensors_max_header = 100'000'000;

namespace detail {
/// numel · bits / 8 with overflow and whole-byte checks.
inline std::uint64_t st_byte_size(const std::vector<std::uint64_t>& shape, st_dtype t, const std::string& name) {
    std::uint64_t n = 1;
    for (auto d : shape) {
        if (d != 0 && n > UINT64_MAX / d) st_fail("tensor '" + name + "': shape product overflows");
        n *= d;
    }
    const auto bits = static_cast<std::uint64_t>(dtype_bits(t));
    if (n > UINT64_MAX / bits) st_fail("tensor '" + name + "': byte size overflows");
    if ((n * bits) % 8 != 0) st_fail("tensor '" + name + "': " + std::to_string(n) + " elements of " + dtype_name(t) +
                                     " do not fill a whole number of bytes");
    return n * bits / 8;
}
} // namespace detail

/// A tensor of rank 0, 1 or 2 converted to a row-major float matrix `[rows x cols]` (rank 2 →
/// `[shape[0] x shape[1]]`, rank 1 → one row, rank 0 → 1 x 1) by `to_float` (BF16, F16, F32, F64,
/// I8, U8; exact except F64 rounding). O(numel).
/// \throws invalid_argument (other dtypes, named), shape_error (rank above 2, or a dimension
/// beyond Eigen::Index).
[[nodiscard]] inline matrix_f to_matrix(const tensor_view& t) {
    constexpr const char* where = "io::to_matrix";
    lowbit::detail::require(converts_to_float(t.dtype), where,
                            std::string("dtype ") + dtype_name(t.dtype) + " has no float conversion (BF16, F16, F32, F64, I8, U8)");
    lowbit::detail::require<shape_error>(t.shape.size() <= 2, where,
                                         "rank " + std::to_string(t.shape.size()) + ", expected 0, 1 or 2");
    const std::uint64_t r = t.shape.size() == 2 ? t.shape[0] : 1, c = t.shape.empty() ? 1 : t.shape.back();
    constexpr auto lim = static_cast<std::uint64_t>(std::numeric_limits<Eigen::Index>::max());
    lowbit::detail::require<shape_error>(r <= lim && c <= lim && (c == 0 || r <= lim / c), where,
                                         "shape too large for a matrix");
    matrix_f m(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c));
    to_float(t, std::span<float>(m.data(), static_cast<std::size_t>(m.size())));
    return m;
}

/// A parsed, validated safetensors file: its header, and its bytes either memory-mapped (`open`)
/// or copied (`parse`). Copies share the same immutable bytes; tensor views stay valid while any
/// copy of the object lives (moves included).
class safetensors_file {
public:
    /// Parses and validates `bytes` (the whole file; copied). O(size).
    /// \throws format_error (see file comment).
    static safetensors_file parse(std::span<const std::byte> bytes) {
        auto buf = std::make_shared<std::vector<std::byte>>(bytes.begin(), bytes.end());
        safetensors_file f;
        f.data_ = std::span<const std::byte>(buf->data(), buf->size());
        f.storage_ = std::move(buf);
        f.validate();
        return f;
    }
    /// Opens, memory-maps (`mapped_file::mode::map`; `mode::read` reads it instead) and validates
    /// the file at `path`: only the header is read, O(header + number of tensors · log).
    /// \throws format_error (unreadable, or malformed; the message ends with "(file '<path>')").
    static safetensors_file open(const std::filesystem::path& path, mapped_file::mode how = mapped_file::mode::map) {
        auto map = std::make_shared<mapped_file>(path, how);
        safetensors_file f;
        f.data_ = map->bytes();
        f.storage_ = std::move(map);
        f.path_ = path;
        try {
            f.validate();
        } catch (const format_error& e) {
            throw format_error(std::string(e.what()) + " (file '" + path.string() + "')");
        }
        return f;
    }
    /// Same as `open(path)` (kept for existing callers: maps, does not read the whole file).
    static safetensors_file read(const std::filesystem::path& path) { return open(path); }

    /// The path given to `open` (empty after `parse`).
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
    /// The whole file's bytes (header included).
    [[nodiscard]] std::span<const std::byte> file_bytes() const noexcept { return data_; }

    /// Tensor names in file order of their offsets.
    [[nodiscard]] std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& e : order_) out.push_back(e);
        return out;
    }
    /// Number of tensors.
    [[nodiscard]] std::size_t size() const { return entries_.size(); }
    /// True if a tensor `name` exists.
    [[nodiscard]] bool contains(const std::string& name) const { return entries_.count(name) != 0; }
    /// The tensor `name`. \throws invalid_argument (no such tensor).
    [[nodiscard]] tensor_view tensor(const std::string& name) const {
        auto it = entries_.find(name);
        lowbit::detail::require(it != entries_.end(), "safetensors_file::tensor", "no tensor named '" + name + "'");
        const auto& e = it->second;
        tensor_view v;
        v.dtype = e.dtype;
        v.shape = e.shape;
        v.bytes = data_.subspan(data_start_ + static_cast<std::size_t>(e.begin), static_cast<std::size_t>(e.end - e.begin));
        return v;
    }
    /// The `__metadata__` map (empty if absent).
    [[nodiscard]] const std::map<std::string, std::string>& metadata() const { return metadata_; }

    /// An F32 tensor of rank 1 or 2 as a row-major matrix (rank 1 → one row), copied (the buffer
    /// may be unaligned). \throws invalid_argument (no such tensor, dtype not F32, rank not 1 or 2).
    [[nodiscard]] matrix_f matrix(const std::string& name) const {
        const auto v = tensor(name);
        constexpr const char* where = "safetensors_file::matrix";
        lowbit::detail::require(v.dtype == st_dtype::F32, where,
                                "tensor '" + name + "' has dtype " + dtype_name(v.dtype) + ", expected F32");
        lowbit::detail::require(v.shape.size() == 1 || v.shape.size() == 2, where,
                                "tensor '" + name + "' has rank " + std::to_string(v.shape.size()) + ", expected 1 or 2");
        const auto r = static_cast<Eigen::Index>(v.shape.size() == 2 ? v.shape[0] : 1);
        const auto c = static_cast<Eigen::Index>(v.shape.back());
        matrix_f m(r, c);
        if (v.bytes.size()) to_float(v, std::span<float>(m.data(), static_cast<std::size_t>(m.size())));
        return m;
    }
    /// The tensor `name` converted to float by `io::to_matrix` (BF16, F16, F32, F64, I8, U8; rank ≤ 2).
    /// \throws invalid_argument (no such tensor, unsupported dtype), shape_error (rank above 2).
    [[nodiscard]] matrix_f to_matrix(const std::string& name) const { return io::to_matrix(tensor(name)); }

private:
    struct entry {
        st_dtype dtype;
        std::vector<std::uint64_t> shape;
        std::uint64_t begin, end;
    };

    void validate() {
        using detail::st_fail;
        using lowbit::detail::json_value;
        if (data_.size() < 8) st_fail("file truncated: " + std::to_string(data_.size()) + " bytes, header length needs 8");
        std::uint64_t n = 0;
        for (int k = 7; k >= 0; --k) n = (n << 8) | static_cast<std::uint64_t>(data_[static_cast<std::size_t>(k)]);
        if (n > safetensors_max_header)
            st_fail("header length " + std::to_string(n) + " exceeds " + std::to_string(safetensors_max_header));
        if (n > data_.size() - 8)
            st_fail("header length " + std::to_string(n) + " exceeds the file (" + std::to_string(data_.size()) +
                    " bytes)");
        data_start_ = 8 + static_cast<std::size_t>(n);
        const std::string_view header(reinterpret_cast<const char*>(data_.data() + 8), static_cast<std::size_t>(n));
        const json_value root = lowbit::detail::json_parser(header, "safetensors").parse_document();
        if (root.type != json_value::kind::object) st_fail("header is not a JSON object");
        std::vector<std::pair<std::uint64_t, std::string>> spans;
        for (std::size_t m = 0; m < root.keys.size(); ++m) {
            const std::string& name = root.keys[m];
            const json_value& v = root.items[m];
            if (name == "__metadata__") {
                if (v.type != json_value::kind::object) st_fail("__metadata__ is not an object");
                for (std::size_t i = 0; i < v.keys.size(); ++i) {
                    const std::string& k = v.keys[i];
                    const json_value& s = v.items[i];
                    if (s.type != json_value::kind::string) st_fail("__metadata__ value of '" + k + "' is not a string");
                    metadata_[k] = s.text;
                }
                continue;
            }
            if (v.type != json_value::kind::object) st_fail("tensor '" + name + "': entry is not an object");
            const json_value *dt = nullptr, *sh = nullptr, *off = nullptr;
            for (std::size_t i = 0; i < v.keys.size(); ++i) {
                const std::string& k = v.keys[i];
                const json_value& x = v.items[i];
                if (k == "dtype") dt = &x;
                else if (k == "shape") sh = &x;
                else if (k == "data_offsets") off = &x;
                else st_fail("tensor '" + name + "': unknown key \"" + k + "\"");
            }
            if (!dt || !sh || !off) st_fail("tensor '" + name + "': needs dtype, shape and data_offsets");
            if (dt->type != json_value::kind::string) st_fail("tensor '" + name + "': dtype is not a string");
            entry e{};
            e.dtype = dtype_from_name(dt->text);
            if (sh->type != json_value::kind::array) st_fail("tensor '" + name + "': shape is not an array");
            for (const auto& d : sh->items) {
                std::uint64_t u;
                if (!d.as_uint(u)) st_fail("tensor '" + name + "': shape entries must be non-negative integers");
                e.shape.push_back(u);
            }
            if (off->type != json_value::kind::array || off->items.size() != 2 || !off->items[0].as_uint(e.begin) ||
                !off->items[1].as_uint(e.end))
                st_fail("tensor '" + name + "': data_offsets must be two non-negative integers");
            if (e.begin > e.end) st_fail("tensor '" + name + "': data_offsets begin > end");
            const std::uint64_t want = detail::st_byte_size(e.shape, e.dtype, name);
            if (e.end - e.begin != want)
                st_fail("tensor '" + name + "': data_offsets span " + std::to_string(e.end - e.begin) +
                        " bytes, shape x dtype needs " + std::to_string(want));
            spans.emplace_back(e.begin, name);
            entries_.emplace(name, std::move(e));
        }
        std::sort(spans.begin(), spans.end(), [this](const auto& a, const auto& b) {
            if (a.first != b.first) return a.first < b.first;
            return entries_.at(a.second).end < entries_.at(b.second).end;
        });
        const std::uint64_t buffer = data_.size() - data_start_;
        std::uint64_t at = 0;
        for (const auto& [b, name] : spans) {
            const auto& e = entries_.at(name);
            if (e.begin != at)
                st_fail("tensor '" + name + "': data_offsets begin " + std::to_string(e.begin) + " but the previous tensor ends at " +
                        std::to_string(at) + (e.begin < at ? " (overlap)" : " (gap)"));
            at = e.end;
            order_.push_back(name);
        }
        if (at != buffer)
            st_fail("tensors cover " + std::to_string(at) + " bytes of a " + std::to_string(buffer) + "-byte data buffer" +
                    (at < buffer ? " (trailing bytes)" : " (file truncated)"));
    }

    std::shared_ptr<const void> storage_; // owns what data_ points into (mapped_file or vector)
    std::span<const std::byte> data_;
    std::filesystem::path path_;
    std::size_t data_start_ = 0;
    std::map<std::string, entry> entries_;
    std::vector<std::string> order_;
    std::map<std::string, std::string> metadata_;
};

/// Collects named tensors and metadata, then writes a safetensors file (see file comment).
class safetensors_writer {
public:
    /// Adds a tensor of raw little-endian bytes. \throws invalid_argument (empty or duplicate name,
    /// "__metadata__", name not UTF-8), shape_error (bytes.size() ≠ shape × dtype size).
    void add(const std::string& name, st_dtype dtype, std::vector<std::uint64_t> shape, std::span<const std::byte> bytes) {
        constexpr const char* where = "safetensors_writer::add";
        lowbit::detail::require(!name.empty() && name != "__metadata__", where, "tensor name '" + name + "' is not allowed");
        lowbit::detail::require(lowbit::detail::valid_utf8(name), where, "tensor name is not valid UTF-8");
        lowbit::detail::require(!tensors_.count(name), where, "duplicate tensor name '" + name + "'");
        std::uint64_t want;
        try {
            want = detail::st_byte_size(shape, dtype, name);
        } catch (const format_error& e) {
            throw shape_error(e.what());
        }
        lowbit::detail::require<shape_error>(want == bytes.size(), where,
                                             "tensor '" + name + "' has " + std::to_string(bytes.size()) +
                                                 " bytes, shape x dtype needs " + std::to_string(want));
        tensors_[name] = {dtype, std::move(shape), std::vector<std::byte>(bytes.begin(), bytes.end())};
    }
    /// Adds a float matrix as F32 `[rows, cols]`. \throws as add.
    void add(const std::string& name, const cref_matrix_f& m) {
        const matrix_f c = m; // contiguous row-major copy
        add(name, st_dtype::F32, {static_cast<std::uint64_t>(c.rows()), static_cast<std::uint64_t>(c.cols())},
            std::as_bytes(std::span<const float>(c.data(), static_cast<std::size_t>(c.size()))));
    }
    /// Adds a float matrix as `dtype` `[rows, cols]`: F32 bit for bit, BF16 or F16 rounded to
    /// nearest even (io::from_float, PyTorch's rule). \throws as add; invalid_argument (other dtypes).
    void add(const std::string& name, const cref_matrix_f& m, st_dtype dtype) {
        const matrix_f c = m;
        const auto bytes = from_float(std::span<const float>(c.data(), static_cast<std::size_t>(c.size())), dtype);
        add(name, dtype, {static_cast<std::uint64_t>(c.rows()), static_cast<std::uint64_t>(c.cols())}, bytes);
    }
    /// Sets a `__metadata__` entry. \throws invalid_argument (key or value not UTF-8).
    void set_metadata(const std::string& key, const std::string& value) {
        lowbit::detail::require(lowbit::detail::valid_utf8(key) && lowbit::detail::valid_utf8(value),
                                "safetensors_writer::set_metadata", "key and value must be valid UTF-8");
        metadata_[key] = value;
    }

    /// The file's bytes.
    [[nodiscard]] std::vector<std::byte> serialize() const {
        return detail::collect_emitted([this](auto&& put) { emit(put); });
    }

    /// Writes the file atomically (io::detail::write_file_atomically: a temporary file in the
    /// folder of `path`, renamed over `path` once complete), streaming the tensors without a second
    /// copy in memory. \throws format_error (I/O failure; `path` is left as it was — absent, or the
    /// previous file byte for byte — and no temporary file remains).
    void write(const std::filesystem::path& path) const {
        detail::write_emitted_atomically(path, [this](auto&& put) { emit(put); }, "safetensors");
    }

private:
    /// Calls `put(pointer, bytes)` for the file's bytes in order (header, then each tensor's data).
    template <class Put>
    void emit(Put&& put) const {
        std::vector<const std::pair<const std::string, item>*> order;
        for (const auto& t : tensors_) order.push_back(&t);
        std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) {
            const int aa = std::max(1, dtype_bits(a->second.dtype) / 8), ab = std::max(1, dtype_bits(b->second.dtype) / 8);
            if (aa != ab) return aa > ab;
            return a->first < b->first;
        });
        std::string h = "{";
        bool first = true;
        if (!metadata_.empty()) {
            h += "\"__metadata__\":{";
            for (const auto& [k, v] : metadata_) {
                if (!first) h += ',';
                first = false;
                lowbit::detail::json_escape(h, k);
                h += ':';
                lowbit::detail::json_escape(h, v);
            }
            h += '}';
            first = false;
        }
        std::uint64_t at = 0;
        for (auto* t : order) {
            if (!first) h += ',';
            first = false;
            lowbit::detail::json_escape(h, t->first);
            h += ":{\"dtype\":\"";
            h += dtype_name(t->second.dtype);
            h += "\",\"shape\":[";
            for (std::size_t i = 0; i < t->second.shape.size(); ++i) {
                if (i) h += ',';
                h += std::to_string(t->second.shape[i]);
            }
            h += "],\"data_offsets\":[" + std::to_string(at) + ",";
            at += t->second.bytes.size();
            h += std::to_string(at) + "]}";
        }
        h += '}';
        while (h.size() % 8 != 0) h += ' ';
        std::byte n[8];
        const std::uint64_t hn = h.size();
        for (int k = 0; k < 8; ++k) n[k] = static_cast<std::byte>((hn >> (8 * k)) & 0xFF);
        put(n, 8);
        put(h.data(), h.size());
        for (auto* t : order) put(t->second.bytes.data(), t->second.bytes.size());
    }

    struct item {
        st_dtype dtype;
        std::vector<std::uint64_t> shape;
        std::vector<std::byte> bytes;
    };
    std::map<std::string, item> tensors_;
    std::map<std::string, std::string> metadata_;
};

} // namespace io
LOWBIT_END_NAMESPACE
