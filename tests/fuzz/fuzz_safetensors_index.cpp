// libFuzzer target: the model.safetensors.index.json parser (io::safetensors_index::parse) on
// arbitrary bytes.
// Contract checked: malformed input throws lowbit::format_error and nothing else (no crash, leak or
// UB under ASan/UBSan); an accepted index has only valid shard names (relative, no ".." component, no
// backslash or NUL), `shard_files()` is sorted, unique and covers every weight_map value, and
// `to_json()` parses back to an equal index.
// Build and run: scripts/fuzz.
#include <lowbit/io/sharded_safetensors.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using lowbit::io::safetensors_index;
    safetensors_index idx;
    try {
        idx = safetensors_index::parse(std::string_view(reinterpret_cast<const char*>(data), size));
    } catch (const lowbit::format_error&) {
        return 0;
    }
    const auto files = idx.shard_files();
    if (!std::is_sorted(files.begin(), files.end()) || std::adjacent_find(files.begin(), files.end()) != files.end())
        std::abort();
    for (const auto& [tensor, file] : idx.weight_map) {
        // Independent of valid_shard_name: no ".." path component (a name such as "..a" is fine).
        const std::string wrapped = "/" + file + "/";
        if (!safetensors_index::valid_shard_name(file) || wrapped.find("/../") != std::string::npos ||
            file.front() == '/')
            std::abort();
        if (!std::binary_search(files.begin(), files.end(), file)) std::abort();
    }
    const safetensors_index again = safetensors_index::parse(idx.to_json()); // must not throw
    if (!(again == idx)) std::abort();
    return 0;
}
