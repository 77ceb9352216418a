#pragma once
/// \file io/gguf.hpp
/// GGUF (llama.cpp's model container), versions 2 and 3, little-endian: a memory-mapped reader
/// with strict validation and an atomic writer.
///
/// File layout (all integers little-endian):
///
///     "GGUF"  u32 version (2 or 3)  u64 tensor_count  u64 kv_count
///     kv_count × { string key, u32 value_type, value }
///     tensor_count × { string name, u32 n_dims (1..4), u64 ne[n_dims] (ne[0] = row length,
///                      innermost first), u32 ggml_type, u64 offset }
///     padding to `general.alignment` (u32 metadata, default 32, a power of two)
///     tensor data: tensor i at data_start + offset_i (offset a multiple of the alignment)
///
/// A string is u64 length + bytes (no terminator). Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32,
/// 5 i32, 6 f32, 7 bool (one byte, 0 or 1), 8 string, 9 array (u32 element type, u64 count,
/// elements; arrays may nest), 10 u64, 11 i64, 12 f64.
///
/// Validation (each failure is a `format_error` naming the key or tensor and the rule): magic,
/// version 2/3 (1 and byte-swapped files refused), every count and length checked against the bytes
/// left before anything is allocated, unknown value or tensor types, bool bytes other than 0/1,
/// arrays nested deeper than 8, duplicate keys and tensor names, keys and names that are not
/// valid UTF-8 or are empty, `general.alignment` not a u32 power of two, n_dims outside 1..4,
/// dimensions whose product overflows 2^63, rows that are not whole blocks, offsets not aligned,
/// tensor data outside the file or overlapping another tensor. Reading is O(file header) plus the
/// mapping; tensor bytes are views into the mapping (pages load on first touch).
///
/// The writer keeps metadata in insertion order and tensors in insertion order, lays tensors out
/// at aligned offsets, and writes atomically (io/detail/atomic_file.hpp: a temporary file beside
/// `path`, renamed over it once complete), so a failed write leaves no partial file.
#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/detail/atomic_file.hpp>
#include <lowbit/io/dtype_convert.hpp>
#include <lowbit/io/gguf_quants.hpp>
#include <lowbit/io/mapped_file.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// Metadata value types of GGUF (numeric values as in the file).
enum class gguf_type : std::uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9,
    u64 = 10, i64 = 11, f64 = 12,
};

/// The name of a metadata type ("u32", "string", ...), "?" if unknown.
[[nodiscard]] inline const char* gguf_type_name(gguf_type t) noexcept {
    static constexpr const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
    const auto i = static_cast<std::uint32_t>(t);
    return i < 13 ? names[i] : "?";
}

/// One metadata value: its type and its content. Unsigned integers are held as u64, signed as
/// i64, f32/f64 as double (an f32 is exact in a double, so writing it back is bit-exact), arrays as
/// an element type plus elements. Plain data.
struct gguf_value {
    gguf_type type = gguf_type::u32;  ///< the stored type
    gguf_type element = gguf_type::u8; ///< element type of an array
    std::variant<std::uint64_t, std::int64_t, double, bool, std::string, std::vector<gguf_value>> v; ///< content

    /// Named constructors (one per stored type).
    static gguf_value of(gguf_type t, std::uint64_t x) { gguf_value r; r.type = t; r.v = x; return r; }
    static gguf_value u32(std::uint32_t x) { return of(gguf_type::u32, x); }
    static gguf_value u64(std::uint64_t x) { return of(gguf_type::u64, x); }
    static gguf_value i32(std::int32_t x) { gguf_value r; r.type = gguf_type::i32; r.v = std::int64_t{x}; return r; }
    static gguf_value f32(float x) { gguf_value r; r.type = gguf_type::f32; r.v = static_cast<double>(x); return r; }
    static gguf_value boolean(bool x) { gguf_value r; r.type = gguf_type::boolean; r.v = x; return r; }
    static gguf_value string(std::string s) { gguf_value r; r.type = gguf_type::string; r.v = std::move(s); return r; }
    /// An array of `element`-typed values (each element's `type` must equal `element`).
    static gguf_value array(gguf_type element, std::vector<gguf_value> items) {
        gguf_value r; r.type = gguf_type::array; r.element = element; r.v = std::move(items); return r;
    }
    /// An array of strings.
    static gguf_value strings(const std::vector<std::string>& s) {
        std::vector<gguf_value> items;
        items.reserve(s.size());
        for (const auto& x : s) items.push_back(string(x));
        return array(gguf_type::string, std::move(items));
    }
    /// An array of i32 (token types) from ints.
    static gguf_value i32s(const std::vector<int>& s) {
        std::vector<gguf_value> items;
        items.reserve(s.size());
        for (int x : s) items.push_back(i32(x));
        return array(gguf_type::i32, std::move(items));
    }

    /// True for the integer types (u8…i64).
    [[nodiscard]] bool is_integer() const noexcept {
        return std::holds_alternative<std::uint64_t>(v) || std::holds_alternative<std::int64_t>(v);
    }
    /// The value of an integer type as i64. \throws format_error (not an integer, or above 2^63−1).
    [[nodiscard]] std::int64_t as_int(std::string_view key = {}) const {
        if (auto* u = std::get_if<std::uint64_t>(&v)) {
            if (*u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) fail(key, "integer too large");
            return static_cast<std::int64_t>(*u);
        }
        if (auto* i = std::get_if<std::int64_t>(&v)) return *i;
        fail(key, std::string("expected an integer, found ") + gguf_type_name(type));
    }
    /// The value of an integer or float type as double. \throws format_error.
    [[nodiscard]] double as_double(std::string_view key = {}) const {
        if (auto* d = std::get_if<double>(&v)) return *d;
        if (is_integer()) return static_cast<double>(as_int(key));
        fail(key, std::string("expected a number, found ") + gguf_type_name(type));
    }
    /// The string. \throws format_error (not a string).
    [[nodiscard]] const std::string& as_string(std::string_view key = {}) const {
        if (auto* s = std::get_if<std::string>(&v)) return *s;
        fail(key, std::string("expected a string, found ") + gguf_type_name(type));
    }
    /// The bool. \throws format_error (not a bool).
    [[nodiscard]] bool as_bool(std::string_view key = {}) const {
        if (auto* b = std::get_if<bool>(&v)) return *b;
        fail(key, std::string("expected a bool, found ") + gguf_type_name(type));
    }
    /// The elements of an array. \throws format_error (not an array).
    [[nodiscard]] const std::vector<gguf_value>& as_array(std::string_view key = {}) const {
        if (auto* a = std::get_if<std::vector<gguf_value>>(&v)) return *a;
        fail(key, std::string("expected an array, found ") + gguf_type_name(type));
    }

private:
    [[noreturn]] static void fail(std::string_view key, const std::string& what) {
        throw format_error("lowbit: gguf: metadata '" + std::string(key) + "': " + what);
    }
};

/// One tensor of a GGUF file: a view into the file's bytes (valid while the `gguf_file` lives).
struct gguf_tensor {
    std::string name;                 ///< tensor name ("blk.0.attn_q.weight")
    std::vector<std::uint64_t> shape; ///< ggml's ne: shape[0] is the row length (innermost), 1..4 entries
    ggml_type type = ggml_type::f32;  ///< element type
    std::uint64_t offset = 0;         ///< offset from the data section's start
    std::span<const std::byte> bytes; ///< the tensor's bytes

    /// Number of elements.
    [[nodiscard]] std::uint64_t elements() const noexcept {
        std::uint64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
    /// Number of rows (elements / shape[0]; 0 for an empty tensor).
    [[nodiscard]] std::uint64_t rows() const noexcept { return shape.empty() || shape[0] == 0 ? 0 : elements() / shape[0]; }
    /// All elements dequantized to float (row-major over ne reversed: outermost first). O(n).
    /// \throws invalid_argument (a type without a dequantizer, naming the tensor).
    [[nodiscard]] std::vector<float> to_float() const {
        std::vector<float> out(static_cast<std::size_t>(elements()));
        try {
            dequantize_row(type, bytes, out);
        } catch (const error& e) {
            throw invalid_argument("lowbit: gguf: tensor '" + name + "': " + e.what());
        }
        return out;
    }
};

namespace detail {

inline constexpr std::uint32_t gguf_default_alignment = 32;
inline constexpr int gguf_max_dims = 4;
inline constexpr int gguf_max_array_depth = 8;

/// Bytes of one scalar of type t (0 for string/array/unknown).
inline std::size_t gguf_scalar_size(gguf_type t) noexcept {
    switch (t) {
    case gguf_type::u8: case gguf_type::i8: case gguf_type::boolean: return 1;
    case gguf_type::u16: case gguf_type::i16: return 2;
    case gguf_type::u32: case gguf_type::i32: case gguf_type::f32: return 4;
    case gguf_type::u64: case gguf_type::i64: case gguf_type::f64: return 8;
    default: return 0;
    }
}

inline bool gguf_utf8(std::string_view s) noexcept {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = 0;
        std::uint32_t cp = 0;
        if (c < 0x80) { ++i; continue; }
        if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; }
        else return false;
        if (n >= s.size() - i) return false; // the continuation bytes run past the end
        for (std::size_t k = 1; k <= n; ++k) {
            const auto d = static_cast<unsigned char>(s[i + k]);
            if ((d & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (d & 0x3F);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

/// Bounds-checked little-endian cursor over the file's bytes.
class gguf_cursor {
public:
    gguf_cursor(std::span<const std::byte> b, std::string src) : b_(b), src_(std::move(src)) {}
    [[noreturn]] void fail(const std::string& what) const {
        throw format_error("lowbit: gguf: " + src_ + ": " + what + " (at byte " + std::to_string(i_) + ")");
    }
    [[nodiscard]] std::size_t pos() const noexcept { return i_; }
    [[nodiscard]] std::size_t left() const noexcept { return b_.size() - i_; }
    void need(std::uint64_t n, const std::string& what) const {
        if (n > left()) fail("truncated: " + what + " needs " + std::to_string(n) + " bytes, " + std::to_string(left()) + " left");
    }
    template <class T>
    T get(const std::string& what) {
        need(sizeof(T), what);
        const T v = load_le<T>(b_.data() + i_);
        i_ += sizeof(T);
        return v;
    }
    std::string str(const std::string& what) {
        const auto n = get<std::uint64_t>(what + " length");
        need(n, what);
        std::string s(reinterpret_cast<const char*>(b_.data() + i_), static_cast<std::size_t>(n));
        i_ += static_cast<std::size_t>(n);
        return s;
    }

private:
    std::span<const std::byte> b_;
    std::string src_;
    std::size_t i_ = 0;
};

inline gguf_value gguf_read_value(gguf_cursor& c, gguf_type t, const std::string& key, int depth) {
    gguf_value r;
    r.type = t;
    switch (t) {
    case gguf_type::u8: r.v = std::uint64_t{c.get<std::uint8_t>(key)}; break;
    case gguf_type::i8: r.v = std::int64_t{c.get<std::int8_t>(key)}; break;
    case gguf_type::u16: r.v = std::uint64_t{c.get<std::uint16_t>(key)}; break;
    case gguf_type::i16: r.v = std::int64_t{c.get<std::int16_t>(key)}; break;
    case gguf_type::u32: r.v = std::uint64_t{c.get<std::uint32_t>(key)}; break;
    case gguf_type::i32: r.v = std::int64_t{c.get<std::int32_t>(key)}; break;
    case gguf_type::u64: r.v = c.get<std::uint64_t>(key); break;
    case gguf_type::i64: r.v = c.get<std::int64_t>(key); break;
    case gguf_type::f32: r.v = static_cast<double>(c.get<float>(key)); break;
    case gguf_type::f64: r.v = c.get<double>(key); break;
    case gguf_type::boolean: {
        const auto b = c.get<std::uint8_t>(key);
        if (b > 1) c.fail("metadata '" + key + "': bool byte " + std::to_string(b) + " is neither 0 nor 1");
        r.v = b != 0;
        break;
    }
    case gguf_type::string: r.v = c.str("metadata '" + key + "' string"); break;
    case gguf_type::array: {
        if (depth >= gguf_max_array_depth) c.fail("metadata '" + key + "': arrays nested deeper than 8");
        const auto et = c.get<std::uint32_t>(key + " array type");
        if (et > 12) c.fail("metadata '" + key + "': unknown array element type " + std::to_string(et));
        r.element = static_cast<gguf_type>(et);
        const auto n = c.get<std::uint64_t>(key + " array count");
        // every element takes at least this many bytes: refuse counts the file cannot hold before allocating
        const std::size_t min_bytes = r.element == gguf_type::string ? 8 : r.element == gguf_type::array ? 12
                                                                                                  : gguf_scalar_size(r.element);
        if (n > c.left() / min_bytes)
            c.fail("metadata '" + key + "': array of " + std::to_string(n) + " elements does not fit in the " +
                   std::to_string(c.left()) + " bytes left");
        std::vector<gguf_value> items;
        items.reserve(static_cast<std::size_t>(n));
        for (std::uint64_t i = 0; i < n; ++i) items.push_back(gguf_read_value(c, r.element, key, depth + 1));
        r.v = std::move(items);
        break;
    }
    default: c.fail("metadata '" + key + "': unknown value type " + std::to_string(static_cast<std::uint32_t>(t)));
    }
    return r;
}

} // namespace detail

/// A parsed GGUF file (see the file comment): metadata in file order, tensor infos with views of
/// their bytes. Movable; the views stay valid while the object lives.
class gguf_file {
public:
    /// An empty object.
    gguf_file() = default;

    /// Maps and parses the file at `path`. \throws format_error (I/O, or any rule of the file comment;
    /// the message names the file and the key/tensor).
    [[nodiscard]] static gguf_file open(const std::filesystem::path& path) {
        gguf_file g;
        g.file_ = std::make_shared<mapped_file>(path);
        g.parse_bytes(std::span<const std::byte>(g.file_->data(), g.file_->size()), path.string());
        return g;
    }

    /// Parses bytes owned by the caller (they must outlive the object and its tensor views).
    /// \throws format_error as `open`.
    [[nodiscard]] static gguf_file parse(std::span<const std::byte> bytes, std::string source = "<memory>") {
        gguf_file g;
        g.parse_bytes(bytes, std::move(source));
        return g;
    }

    /// Format version (2 or 3).
    [[nodiscard]] std::uint32_t version() const noexcept { return version_; }
    /// Data alignment (general.alignment or 32).
    [[nodiscard]] std::uint32_t alignment() const noexcept { return alignment_; }
    /// Offset of the data section in the file.
    [[nodiscard]] std::uint64_t data_offset() const noexcept { return data_offset_; }
    /// Metadata (key, value) in file order.
    [[nodiscard]] const std::vector<std::pair<std::string, gguf_value>>& metadata() const noexcept { return kv_; }
    /// Tensors in file order.
    [[nodiscard]] const std::vector<gguf_tensor>& tensors() const noexcept { return tensors_; }

    /// The value of `key`, or nullptr. O(1).
    [[nodiscard]] const gguf_value* find(std::string_view key) const {
        auto it = kv_index_.find(std::string(key));
        return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
    }
    /// The value of `key`. \throws format_error "metadata 'key' is missing".
    [[nodiscard]] const gguf_value& at(std::string_view key) const {
        if (const auto* v = find(key)) return *v;
        throw format_error("lowbit: gguf: " + source_ + ": metadata '" + std::string(key) + "' is missing");
    }
    /// Integer metadata `key` (or `fallback` when absent and fallback given). \throws format_error.
    [[nodiscard]] std::int64_t get_int(std::string_view key) const { return at(key).as_int(key); }
    [[nodiscard]] std::int64_t get_int(std::string_view key, std::int64_t fallback) const {
        const auto* v = find(key);
        return v ? v->as_int(key) : fallback;
    }
    /// Numeric metadata `key` as double. \throws format_error.
    [[nodiscard]] double get_double(std::string_view key) const { return at(key).as_double(key); }
    [[nodiscard]] double get_double(std::string_view key, double fallback) const {
        const auto* v = find(key);
        return v ? v->as_double(key) : fallback;
    }
    /// String metadata `key`. \throws format_error.
    [[nodiscard]] const std::string& get_string(std::string_view key) const { return at(key).as_string(key); }

    /// The tensor called `name`, or nullptr. O(1).
    [[nodiscard]] const gguf_tensor* find_tensor(std::string_view name) const {
        auto it = tensor_index_.find(std::string(name));
        return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
    }
    /// The tensor called `name`. \throws format_error "tensor 'name' is missing".
    [[nodiscard]] const gguf_tensor& tensor(std::string_view name) const {
        if (const auto* t = find_tensor(name)) return *t;
        throw format_error("lowbit: gguf: " + source_ + ": tensor '" + std::string(name) + "' is missing");
    }
    /// Where the file came from (path or "<memory>").
    [[nodiscard]] const std::string& source() const noexcept { return source_; }

private:
    void parse_bytes(std::span<const std::byte> b, std::string source) {
        source_ = std::move(source);
        detail::gguf_cursor c(b, source_);
        c.need(4, "magic");
        if (std::memcmp(b.data(), "GGUF", 4) != 0) c.fail("not a GGUF file (magic is not \"GGUF\")");
        c.get<std::uint32_t>("magic");
        version_ = c.get<std::uint32_t>("version");
        if (version_ == 1) c.fail("GGUF version 1 is not supported (only 2 and 3)");
        if (version_ != 2 && version_ != 3) {
            if ((version_ & 0xFFFF) == 0) c.fail("big-endian GGUF is not supported");
            c.fail("unsupported GGUF version " + std::to_string(version_));
        }
        const auto n_tensors = c.get<std::uint64_t>("tensor count");
        const auto n_kv = c.get<std::uint64_t>("metadata count");
        // a key/value takes ≥ 13 bytes (8 key length + 1 key byte + 4 type), a tensor info ≥ 29
        if (n_kv > c.left() / 13) c.fail("metadata count " + std::to_string(n_kv) + " exceeds what the file can hold");
        if (n_tensors > c.left() / 29) c.fail("tensor count " + std::to_string(n_tensors) + " exceeds what the file can hold");
        kv_.reserve(static_cast<std::size_t>(n_kv));
        for (std::uint64_t i = 0; i < n_kv; ++i) {
            std::string key = c.str("metadata key " + std::to_string(i));
            if (key.empty()) c.fail("metadata key " + std::to_string(i) + " is empty");
            if (!detail::gguf_utf8(key)) c.fail("metadata key " + std::to_string(i) + " is not valid UTF-8");
            if (kv_index_.count(key)) c.fail("duplicate metadata key '" + key + "'");
            const auto t = c.get<std::uint32_t>("type of '" + key + "'");
            if (t > 12) c.fail("metadata '" + key + "': unknown value type " + std::to_string(t));
            gguf_value v = detail::gguf_read_value(c, static_cast<gguf_type>(t), key, 0);
            kv_index_.emplace(key, kv_.size());
            kv_.emplace_back(std::move(key), std::move(v));
        }
        alignment_ = detail::gguf_default_alignment;
        if (const auto* a = find("general.alignment")) {
            if (a->type != gguf_type::u32) c.fail("metadata 'general.alignment' must be a u32");
            const auto al = std::get<std::uint64_t>(a->v);
            if (al == 0 || (al & (al - 1)) != 0) c.fail("metadata 'general.alignment' = " + std::to_string(al) + " is not a power of two");
            alignment_ = static_cast<std::uint32_t>(al);
        }
        tensors_.reserve(static_cast<std::size_t>(n_tensors));
        for (std::uint64_t i = 0; i < n_tensors; ++i) {
            gguf_tensor t;
            t.name = c.str("tensor name " + std::to_string(i));
            if (t.name.empty()) c.fail("tensor " + std::to_string(i) + " has an empty name");
            if (!detail::gguf_utf8(t.name)) c.fail("tensor " + std::to_string(i) + " name is not valid UTF-8");
            if (tensor_index_.count(t.name)) c.fail("duplicate tensor name '" + t.name + "'");
            const std::string tn = "tensor '" + t.name + "'";
            const auto nd = c.get<std::uint32_t>(tn + " n_dims");
            if (nd < 1 || nd > detail::gguf_max_dims) c.fail(tn + ": n_dims " + std::to_string(nd) + " outside 1..4");
            std::uint64_t n = 1;
            for (std::uint32_t k = 0; k < nd; ++k) {
                const auto d = c.get<std::uint64_t>(tn + " dimension");
                if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                    c.fail(tn + ": dimension " + std::to_string(d) + " exceeds 2^63 - 1");
                if (d != 0 && n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / d)
                    c.fail(tn + ": element count overflows");
                n *= d;
                t.shape.push_back(d);
            }
            const auto ty = c.get<std::uint32_t>(tn + " type");
            const auto* tr = find_ggml_type(ty);
            if (!tr) c.fail(tn + ": unknown ggml type " + std::to_string(ty));
            t.type = tr->type;
            if (t.shape[0] % static_cast<std::uint64_t>(tr->block_size) != 0)
                c.fail(tn + ": row length " + std::to_string(t.shape[0]) + " is not a multiple of the " + tr->name +
                       " block size " + std::to_string(tr->block_size));
            t.offset = c.get<std::uint64_t>(tn + " offset");
            if (t.offset % alignment_ != 0)
                c.fail(tn + ": data offset " + std::to_string(t.offset) + " is not a multiple of the alignment " + std::to_string(alignment_));
            tensor_index_.emplace(t.name, tensors_.size());
            tensors_.push_back(std::move(t));
        }
        const std::uint64_t end = c.pos();
        data_offset_ = (end + alignment_ - 1) / alignment_ * alignment_;
        const std::uint64_t data_size = b.size() >= data_offset_ ? b.size() - data_offset_ : 0;
        if (n_tensors > 0 && b.size() < data_offset_) c.fail("truncated before the tensor data (padding missing)");
        std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
        ranges.reserve(tensors_.size());
        for (auto& t : tensors_) {
            const auto* tr = find_ggml_type(static_cast<std::uint32_t>(t.type));
            const std::uint64_t rows = t.rows();
            const std::uint64_t rb = t.shape[0] / static_cast<std::uint64_t>(tr->block_size) * static_cast<std::uint64_t>(tr->type_size);
            if (rows != 0 && rb > std::numeric_limits<std::uint64_t>::max() / rows)
                c.fail("tensor '" + t.name + "': byte size overflows");
            const std::uint64_t nbytes = rb * rows;
            if (t.offset > data_size || nbytes > data_size - t.offset)
                c.fail("tensor '" + t.name + "': data [" + std::to_string(t.offset) + ", +" + std::to_string(nbytes) +
                       ") lies outside the " + std::to_string(data_size) + " data bytes of the file");
            t.bytes = b.subspan(static_cast<std::size_t>(data_offset_ + t.offset), static_cast<std::size_t>(nbytes));
            if (nbytes) ranges.emplace_back(t.offset, nbytes);
        }
        std::sort(ranges.begin(), ranges.end());
        for (std::size_t i = 1; i < ranges.size(); ++i)
            if (ranges[i - 1].first + ranges[i - 1].second > ranges[i].first)
                c.fail("tensor data overlap at data offset " + std::to_string(ranges[i].first));
    }

    std::shared_ptr<mapped_file> file_;
    std::string source_;
    std::uint32_t version_ = 0;
    std::uint32_t alignment_ = detail::gguf_default_alignment;
    std::uint64_t data_offset_ = 0;
    std::vector<std::pair<std::string, gguf_value>> kv_;
    std::unordered_map<std::string, std::size_t> kv_index_;
    std::vector<gguf_tensor> tensors_;
    std::unordered_map<std::string, std::size_t> tensor_index_;
};

/// Builds a GGUF v3 file in memory and writes it atomically. Keys and tensors keep insertion order.
class gguf_writer {
public:
    /// Sets metadata `key` (replacing an earlier value of the same key, keeping its position).
    /// \throws invalid_argument (empty key or not UTF-8; an array whose elements differ from its type).
    void set(const std::string& key, gguf_value v) {
        lowbit::detail::require(!key.empty() && detail::gguf_utf8(key), "gguf_writer::set", "key must be non-empty UTF-8");
        check_value(v, key, 0);
        if (key == "general.alignment") {
            lowbit::detail::require(v.type == gguf_type::u32, "gguf_writer::set", "general.alignment must be a u32");
            const auto a = std::get<std::uint64_t>(v.v);
            lowbit::detail::require(a != 0 && (a & (a - 1)) == 0, "gguf_writer::set", "general.alignment must be a power of two");
            alignment_ = static_cast<std::uint32_t>(a);
        }
        for (auto& kv : kv_)
            if (kv.first == key) {
                kv.second = std::move(v);
                return;
            }
        kv_.emplace_back(key, std::move(v));
    }

    /// Adds tensor `name` of `type` with ggml shape `ne` (ne[0] = row length) and its encoded bytes
    /// (exactly the size the type and shape need). \throws invalid_argument (duplicate or empty name,
    /// unknown type, 0 or more than 4 dims), shape_error (row not whole blocks, wrong byte count).
    void add_tensor(const std::string& name, ggml_type type, std::vector<std::uint64_t> ne, std::vector<std::byte> bytes) {
        constexpr const char* where = "gguf_writer::add_tensor";
        lowbit::detail::require(!name.empty() && detail::gguf_utf8(name), where, "tensor name must be non-empty UTF-8");
        for (const auto& t : tensors_) lowbit::detail::require(t.name != name, where, "duplicate tensor name '" + name + "'");
        lowbit::detail::require(!ne.empty() && ne.size() <= 4, where, "tensor '" + name + "' needs 1..4 dimensions");
        std::uint64_t rows = 1;
        for (std::size_t k = 1; k < ne.size(); ++k) rows *= ne[k];
        const std::uint64_t need = ggml_row_bytes(type, ne[0]) * rows;
        lowbit::detail::require<shape_error>(bytes.size() == need, where,
                                     "tensor '" + name + "' has " + std::to_string(bytes.size()) + " bytes, needs " + std::to_string(need));
        tensors_.push_back({name, type, std::move(ne), std::move(bytes)});
    }

    /// Adds a float tensor encoded as `type` (quantize_row over each row). `ne` as in add_tensor.
    /// \throws as add_tensor and quantize_row.
    void add_float_tensor(const std::string& name, ggml_type type, std::vector<std::uint64_t> ne, std::span<const float> data) {
        std::uint64_t n = 1;
        for (auto d : ne) n *= d;
        lowbit::detail::require<shape_error>(data.size() == n, "gguf_writer::add_float_tensor", "tensor '" + name + "': element count differs from the shape");
        add_tensor(name, type, std::move(ne), quantize(type, data));
    }

    /// The file's bytes. O(size).
    [[nodiscard]] std::vector<std::byte> serialize() const {
        return detail::collect_emitted([this](auto&& put) { emit(put); });
    }

    /// Writes the file atomically (io::detail::write_file_atomically: a temporary file in the
    /// folder of `path`, renamed over `path` once complete), streaming the tensors without a second
    /// copy in memory. \throws format_error (I/O failure; `path` is left as it was — absent, or the
    /// previous file byte for byte — and no temporary file remains).
    void write(const std::filesystem::path& path) const {
        detail::write_emitted_atomically(path, [this](auto&& put) { emit(put); }, "gguf");
    }

    /// Number of tensors added.
    [[nodiscard]] std::size_t tensor_count() const noexcept { return tensors_.size(); }
    /// Total bytes of tensor data (without padding).
    [[nodiscard]] std::uint64_t tensor_bytes() const noexcept {
        std::uint64_t n = 0;
        for (const auto& t : tensors_) n += t.bytes.size();
        return n;
    }

private:
    struct item {
        std::string name;
        ggml_type type;
        std::vector<std::uint64_t> ne;
        std::vector<std::byte> bytes;
    };

    /// Calls `put(pointer, bytes)` for the file's bytes in order: header, then each tensor's data
    /// followed by its zero padding to the alignment.
    template <class Put>
    void emit(Put&& put_bytes) const {
        std::vector<std::byte> out;
        auto put = [&out](const void* p, std::size_t n) {
            const auto* c = static_cast<const std::byte*>(p);
            out.insert(out.end(), c, c + n);
        };
        auto u32 = [&](std::uint32_t v) { std::byte b[4]; detail::store_le(b, v); put(b, 4); };
        auto u64 = [&](std::uint64_t v) { std::byte b[8]; detail::store_le(b, v); put(b, 8); };
        auto str = [&](const std::string& s) { u64(s.size()); put(s.data(), s.size()); };
        put("GGUF", 4);
        u32(3);
        u64(tensors_.size());
        u64(kv_.size());
        for (const auto& [k, v] : kv_) {
            str(k);
            u32(static_cast<std::uint32_t>(v.type));
            write_value(out, v);
        }
        std::uint64_t off = 0;
        for (const auto& t : tensors_) {
            str(t.name);
            u32(static_cast<std::uint32_t>(t.ne.size()));
            for (auto d : t.ne) u64(d);
            u32(static_cast<std::uint32_t>(t.type));
            u64(off);
            off += (t.bytes.size() + alignment_ - 1) / alignment_ * alignment_;
        }
        out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_);
        put_bytes(out.data(), out.size());
        const std::vector<std::byte> zeros(alignment_);
        for (const auto& t : tensors_) {
            put_bytes(t.bytes.data(), t.bytes.size());
            put_bytes(zeros.data(), (alignment_ - t.bytes.size() % alignment_) % alignment_);
        }
    }

    static void check_value(const gguf_value& v, const std::string& key, int depth) {
        constexpr const char* where = "gguf_writer::set";
        lowbit::detail::require(static_cast<std::uint32_t>(v.type) <= 12, where, "'" + key + "': unknown value type");
        const bool ok = [&] {
            switch (v.type) {
            case gguf_type::u8: case gguf_type::u16: case gguf_type::u32: case gguf_type::u64:
                return std::holds_alternative<std::uint64_t>(v.v);
            case gguf_type::i8: case gguf_type::i16: case gguf_type::i32: case gguf_type::i64:
                return std::holds_alternative<std::int64_t>(v.v);
            case gguf_type::f32: case gguf_type::f64: return std::holds_alternative<double>(v.v);
            case gguf_type::boolean: return std::holds_alternative<bool>(v.v);
            case gguf_type::string: return std::holds_alternative<std::string>(v.v);
            case gguf_type::array: return std::holds_alternative<std::vector<gguf_value>>(v.v);
            }
            return false;
        }();
        lowbit::detail::require(ok, where, "'" + key + "': content does not match its type " + gguf_type_name(v.type));
        if (v.type == gguf_type::array) {
            lowbit::detail::require(depth < detail::gguf_max_array_depth, where, "'" + key + "': arrays nested deeper than 8");
            for (const auto& e : std::get<std::vector<gguf_value>>(v.v)) {
                lowbit::detail::require(e.type == v.element, where, "'" + key + "': array element of type " + gguf_type_name(e.type) +
                                                               " in an array of " + gguf_type_name(v.element));
                check_value(e, key, depth + 1);
            }
        }
    }

    static void write_value(std::vector<std::byte>& out, const gguf_value& v) {
        auto put = [&out](auto x) {
            std::byte b[sizeof(x)];
            detail::store_le(b, x);
            out.insert(out.end(), b, b + sizeof(x));
        };
        switch (v.type) {
        case gguf_type::u8: put(static_cast<std::uint8_t>(std::get<std::uint64_t>(v.v))); break;
        case gguf_type::u16: put(static_cast<std::uint16_t>(std::get<std::uint64_t>(v.v))); break;
        case gguf_type::u32: put(static_cast<std::uint32_t>(std::get<std::uint64_t>(v.v))); break;
        case gguf_type::u64: put(std::get<std::uint64_t>(v.v)); break;
        case gguf_type::i8: put(static_cast<std::int8_t>(std::get<std::int64_t>(v.v))); break;
        case gguf_type::i16: put(static_cast<std::int16_t>(std::get<std::int64_t>(v.v))); break;
        case gguf_type::i32: put(static_cast<std::int32_t>(std::get<std::int64_t>(v.v))); break;
        case gguf_type::i64: put(std::get<std::int64_t>(v.v)); break;
        case gguf_type::f32: put(static_cast<float>(std::get<double>(v.v))); break;
        case gguf_type::f64: put(std::get<double>(v.v)); break;
        case gguf_type::boolean: put(static_cast<std::uint8_t>(std::get<bool>(v.v) ? 1 : 0)); break;
        case gguf_type::string: {
            const auto& s = std::get<std::string>(v.v);
            put(static_cast<std::uint64_t>(s.size()));
            const auto* c = reinterpret_cast<const std::byte*>(s.data());
            out.insert(out.end(), c, c + s.size());
            break;
        }
        case gguf_type::array: {
            const auto& a = std::get<std::vector<gguf_value>>(v.v);
            put(static_cast<std::uint32_t>(v.element));
            put(static_cast<std::uint64_t>(a.size()));
            for (const auto& e : a) write_value(out, e);
            break;
        }
        }
    }

    std::vector<std::pair<std::string, gguf_value>> kv_;
    std::vector<item> tensors_;
    std::uint32_t alignment_ = detail::gguf_default_alignment;
};

} // namespace io
LOWBIT_END_NAMESPACE
