#pragma once
/// \file io/sharded_safetensors.hpp
/// Hugging Face checkpoints split into several safetensors files ("shards") with an index
/// `model.safetensors.index.json`, or held in one `model.safetensors`.
///
/// Index format (as transformers' `save_pretrained` writes it):
/// `{"metadata": {"total_size": N, ...}, "weight_map": {"<tensor>": "<shard file>", ...}}`.
/// Shard file names are relative to the index's folder.
///
/// `sharded_safetensors::open` memory-maps every shard (safetensors_file::open: headers validated,
/// tensor bytes left in the mapping) and checks that the index and the shards agree exactly. It
/// refuses, with a format_error naming the index, the shard and the tensor:
///  - an index that is not strict JSON or not of the form above (`safetensors_index::parse`);
///  - a shard file name that is empty, absolute, or has an empty, "." or ".." component or a
///    backslash or NUL (an index must not reach outside its folder);
///  - an index naming a shard file that does not exist, or a shard that is not a valid
///    safetensors file (truncated, corrupt: the reader's message, naming the shard file);
///  - a tensor name present in two shards;
///  - an index naming a tensor absent from the shard it names;
///  - a tensor present in a shard but not mapped to that shard by the index. Choice: refused, not
///    ignored: transformers would load such a tensor from the shard as an unexpected key, so an index
///    that does not list it describes a different checkpoint than the files hold (mixed or
///    half-copied folders), and a silent choice of one could run the wrong weights.
/// Shard files present in the folder but not named by the index are ignored.

#include <lowbit/config.hpp>
#include <lowbit/detail/json.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/dtype_convert.hpp>
#include <lowbit/io/mapped_file.hpp>
#include <lowbit/io/safetensors.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// The contents of a `model.safetensors.index.json`.
struct safetensors_index {
    /// Tensor name → shard file name (relative to the index's folder), sorted by tensor name.
    std::map<std::string, std::string> weight_map;
    /// `metadata.total_size` (bytes of all tensors) if present. Not checked against the shards:
    /// writers disagree on it (tied or shared tensors).
    std::optional<std::uint64_t> total_size;
    /// `metadata.total_parameters` if present (transformers ≥ 5); not checked either.
    std::optional<std::uint64_t> total_parameters;

    /// Parses and validates index JSON text. Accepted: an object with a member "weight_map" (an
    /// object of string → shard file name, each name a relative path of non-empty components, none
    /// "." or "..", no backslash or NUL) and optionally "metadata" (an object; its "total_size" and
    /// "total_parameters", if present, non-negative integers; other members ignored). Other
    /// top-level members are ignored. Strict JSON (detail/json.hpp). O(size · log).
    /// \throws format_error "lowbit: safetensors index: ..." naming the member or tensor and the rule.
    [[nodiscard]] static safetensors_index parse(std::string_view text) {
        using lowbit::detail::json_value;
        auto fail = [](const std::string& what) { throw format_error("lowbit: safetensors index: " + what); };
        const json_value root = lowbit::detail::json_parser(text, "safetensors index").parse_document();
        if (root.type != json_value::kind::object) fail("the document is not a JSON object");
        safetensors_index idx;
        bool have_map = false;
        for (std::size_t m = 0; m < root.keys.size(); ++m) {
            const json_value& v = root.items[m];
            if (root.keys[m] == "weight_map") {
                if (v.type != json_value::kind::object) fail("\"weight_map\" is not an object");
                have_map = true;
                for (std::size_t i = 0; i < v.keys.size(); ++i) {
                    const std::string& name = v.keys[i];
                    if (v.items[i].type != json_value::kind::string)
                        fail("weight_map entry of tensor '" + name + "' is not a string");
                    const std::string& file = v.items[i].text;
                    if (!valid_shard_name(file))
                        fail("weight_map entry of tensor '" + name + "': shard file name '" + file +
                             "' is not a relative path inside the index's folder");
                    idx.weight_map.emplace(name, file);
                }
            } else if (root.keys[m] == "metadata") {
                if (v.type != json_value::kind::object) fail("\"metadata\" is not an object");
                for (std::size_t i = 0; i < v.keys.size(); ++i) {
                    std::optional<std::uint64_t>* slot = v.keys[i] == "total_size"         ? &idx.total_size
                                                         : v.keys[i] == "total_parameters" ? &idx.total_parameters
                                                                                           : nullptr;
                    if (!slot) continue;
                    std::uint64_t u;
                    if (!v.items[i].as_uint(u)) fail("metadata \"" + v.keys[i] + "\" is not a non-negative integer");
                    *slot = u;
                }
            }
        }
        if (!have_map) fail("no \"weight_map\" member");
        return idx;
    }

    /// True if `file` is accepted as a shard file name (see `parse`).
    [[nodiscard]] static bool valid_shard_name(std::string_view file) {
        if (file.empty() || file.front() == '/' || file.find('\\') != std::string_view::npos ||
            file.find('\0') != std::string_view::npos)
            return false;
        std::size_t b = 0;
        while (true) {
            const std::size_t e = file.find('/', b);
            const std::string_view part = file.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b);
            if (part.empty() || part == "." || part == "..") return false;
            if (e == std::string_view::npos) return true;
            b = e + 1;
        }
    }

    /// The distinct shard file names, sorted. O(n log n).
    [[nodiscard]] std::vector<std::string> shard_files() const {
        std::vector<std::string> out;
        for (const auto& [t, f] : weight_map) out.push_back(f);
        std::sort(out.begin(), out.end());
        out.erase(std::unique(out.begin(), out.end()), out.end());
        return out;
    }

    /// The index as JSON in transformers' layout (metadata first, then weight_map; 2-space indent);
    /// `parse(to_json())` gives back an equal index. Names must be valid UTF-8 for valid JSON.
    [[nodiscard]] std::string to_json() const {
        std::string s = "{\n  \"metadata\": {";
        bool first = true;
        auto meta = [&](const char* k, const std::optional<std::uint64_t>& v) {
            if (!v) return;
            s += first ? "\n    \"" : ",\n    \"";
            s += k;
            s += "\": " + std::to_string(*v);
            first = false;
        };
        meta("total_parameters", total_parameters);
        meta("total_size", total_size);
        s += first ? "},\n  \"weight_map\": {" : "\n  },\n  \"weight_map\": {";
        first = true;
        for (const auto& [t, f] : weight_map) {
            s += first ? "\n    " : ",\n    ";
            lowbit::detail::json_escape(s, t);
            s += ": ";
            lowbit::detail::json_escape(s, f);
            first = false;
        }
        s += first ? "}\n}\n" : "\n  }\n}\n";
        return s;
    }

    /// Equality of every field.
    friend bool operator==(const safetensors_index&, const safetensors_index&) = default;
};

/// A checkpoint's tensors across its shards: one lookup by name whatever file holds it.
/// Copies share the mapped shards (cheap); tensor views stay valid while any copy lives.
class sharded_safetensors {
public:
    /// File name of the index inside a checkpoint folder.
    static constexpr const char* index_file_name = "model.safetensors.index.json";
    /// File name of an unsharded checkpoint inside a folder.
    static constexpr const char* single_file_name = "model.safetensors";

    /// Opens a checkpoint from `path`: a folder (its `model.safetensors.index.json` if present,
    /// otherwise its `model.safetensors`), an index file (a name ending in ".json"), or one
    /// safetensors file. Maps every shard (`how`: see mapped_file) and validates the whole set (see
    /// the file comment). O(total header size · log).
    /// \throws format_error (see the file comment; the message names the files and the tensor).
    [[nodiscard]] static sharded_safetensors open(const std::filesystem::path& path,
                                                  mapped_file::mode how = mapped_file::mode::map) {
        namespace fs = std::filesystem;
        std::error_code ec;
        if (fs::is_directory(path, ec)) {
            if (fs::exists(path / index_file_name, ec)) return open_index(path / index_file_name, how);
            if (fs::exists(path / single_file_name, ec)) return open_single(path / single_file_name, how);
            fail("folder '" + path.string() + "' holds neither " + index_file_name + " nor " + single_file_name);
        }
        if (path.extension() == ".json") return open_index(path, how);
        return open_single(path, how);
    }

    /// Tensor names of all shards, sorted.
    [[nodiscard]] std::vector<std::string> names() const {
        std::vector<std::string> out;
        out.reserve(where_.size());
        for (const auto& [n, s] : where_) out.push_back(n);
        return out;
    }
    /// Number of tensors.
    [[nodiscard]] std::size_t size() const noexcept { return where_.size(); }
    /// True if a tensor `name` exists. O(log n).
    [[nodiscard]] bool contains(const std::string& name) const { return where_.count(name) != 0; }
    /// The tensor `name` (a view into its shard's mapping). O(log n).
    /// \throws invalid_argument (no such tensor).
    [[nodiscard]] tensor_view tensor(const std::string& name) const { return shard_of(name).tensor(name); }
    /// The tensor `name` as a float matrix (io::to_matrix: BF16, F16, F32, F64, I8, U8; rank ≤ 2).
    /// \throws invalid_argument (no such tensor, unsupported dtype), shape_error (rank above 2).
    [[nodiscard]] matrix_f to_matrix(const std::string& name) const { return io::to_matrix(tensor(name)); }
    /// The shard holding `name`. \throws invalid_argument (no such tensor).
    [[nodiscard]] const safetensors_file& shard_of(const std::string& name) const {
        const auto it = where_.find(name);
        lowbit::detail::require(it != where_.end(), "sharded_safetensors::tensor",
                                "no tensor named '" + name + "' in '" + source_.string() + "'");
        return shards_[it->second];
    }
    /// The shards, in the order of `index().shard_files()` (one entry for an unsharded checkpoint).
    [[nodiscard]] const std::vector<safetensors_file>& shards() const noexcept { return shards_; }
    /// The index (for an unsharded checkpoint: every tensor mapped to the file's name, no metadata).
    [[nodiscard]] const safetensors_index& index() const noexcept { return index_; }
    /// The index file, or the single safetensors file, this object was opened from.
    [[nodiscard]] const std::filesystem::path& source() const noexcept { return source_; }

private:
    [[noreturn]] static void fail(const std::string& what) {
        throw format_error("lowbit: sharded_safetensors: " + what);
    }

    static sharded_safetensors open_single(const std::filesystem::path& file, mapped_file::mode how) {
        sharded_safetensors s;
        s.source_ = file;
        s.shards_.push_back(safetensors_file::open(file, how));
        const std::string fname = file.filename().string();
        for (const auto& n : s.shards_[0].names()) {
            s.where_.emplace(n, 0);
            s.index_.weight_map.emplace(n, fname);
        }
        return s;
    }

    static sharded_safetensors open_index(const std::filesystem::path& index_path, mapped_file::mode how) {
        namespace fs = std::filesystem;
        sharded_safetensors s;
        s.source_ = index_path;
        const std::string idx_name = "index '" + index_path.string() + "'";
        {
            const mapped_file text(index_path, how); // format_error names the path
            try {
                s.index_ = safetensors_index::parse(
                    std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
            } catch (const format_error& e) {
                throw format_error(std::string(e.what()) + " (file '" + index_path.string() + "')");
            }
        }
        const fs::path folder = index_path.parent_path();
        const auto files = s.index_.shard_files();
        std::map<std::string, std::size_t> shard_no;
        for (const auto& f : files) {
            std::string first_tensor;
            for (const auto& [t, file] : s.index_.weight_map)
                if (file == f) {
                    first_tensor = t;
                    break;
                }
            const fs::path p = folder / f;
            std::error_code ec;
            if (!fs::exists(p, ec))
                fail(idx_name + " maps tensor '" + first_tensor + "' to shard '" + p.string() + "', which does not exist");
            try {
                s.shards_.push_back(safetensors_file::open(p, how));
            } catch (const format_error& e) {
                fail("shard '" + p.string() + "' of " + idx_name + " (holding tensor '" + first_tensor + "'): " + e.what());
            }
            shard_no.emplace(f, s.shards_.size() - 1);
        }
        // Every tensor of every shard: duplicates across shards, then agreement with the index.
        for (std::size_t k = 0; k < s.shards_.size(); ++k) {
            for (const auto& n : s.shards_[k].names()) {
                const auto [it, fresh] = s.where_.emplace(n, k);
                if (!fresh)
                    fail("tensor '" + n + "' is in two shards, '" + s.shards_[it->second].path().string() + "' and '" +
                         s.shards_[k].path().string() + "' (" + idx_name + ")");
            }
        }
        for (const auto& [t, f] : s.index_.weight_map) {
            const std::size_t k = shard_no.at(f);
            const auto it = s.where_.find(t);
            if (it == s.where_.end() || it->second != k)
                fail(idx_name + " maps tensor '" + t + "' to shard '" + s.shards_[k].path().string() +
                     "', which has no such tensor");
        }
        for (const auto& [t, k] : s.where_)
            if (!s.index_.weight_map.count(t))
                fail("tensor '" + t + "' of shard '" + s.shards_[k].path().string() + "' is not in " + idx_name);
        return s;
    }

    std::filesystem::path source_;
    safetensors_index index_;
    std::vector<safetensors_file> shards_;
    std::map<std::string, std::size_t> where_; // tensor → index into shards_
};

} // namespace io
LOWBIT_END_NAMESPACE
