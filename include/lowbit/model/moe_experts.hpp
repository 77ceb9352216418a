#pragma once
/// \file model/moe_experts.hpp
/// Packed operators for MoE expert linears whose stored form shares tensors between the experts of
/// a layer and projection type, and the record formats that save them (no dense dequantized copy):
///
/// - `cejd_expert_linear` (record format "cejd_binary1", MoBiE's CEJD experts, model/mobie.hpp):
///   W_e = G·(μ 1ᵀ + diag(α)·B_e), G `[m x k]` the fp16 basis shared by the E experts, B_e `[k x n]`
///   binary codes with fp16 α, μ `[k]`. y = x·W_eᵀ runs as z = x·(μ1ᵀ + diag(α)B_e)ᵀ on lowbit's packed
///   `binary1` kernel (`gemm(packed_matrix<binary1>, x, act_fp32)`), then y = z·Gᵀ (Eigen, float).
/// - `kbvq_expert_linear` (record format "kbvq_vq", KBVQ-MoE's experts with a VQ residual,
///   model/kbvq_moe.hpp): Ŵ_e = C_e·Bₛ + diag(s)·Q_e + β·uᵀ (BCOS's γ already folded into C_e and s),
///   Bₛ `[r x n]` and the codebook `[K x d]` shared by the E experts, Q_e `[m x n]` the codewords the
///   `m·n/d` indices select (row i, group g = columns [g·d, (g+1)·d)). y = (x·Bₛᵀ)·C_eᵀ + residual +
///   (x·u)·βᵀ; the residual never materialises Q_e: for one to three tokens and K < m it builds a
///   per-token table of codeword · x-segment dot products (K·n mult-adds) and sums n/d table entries
///   per row; otherwise it decodes one row of codewords at a time (n floats) and multiplies it with
///   every token.
///
/// Records (`linear_record`, model/recipes.hpp) of these formats carry `expert_tensors`: per-linear
/// fp16 tensors (`own`) and a group of fp16 tensors shared by `shared_by` linears (`shared`, one
/// `shared_ptr` held by every record and operator of the group: stored and kept in memory once).
/// `save_quantized_model` writes the group once as F16 tensors `<key>.<name>` (metadata `<key>.tensors`,
/// `<key>.shared_by`), every record its own tensors as F16 `<name>.t.<tensor>` (metadata
/// `<name>.tensors`) and `<name>.shared` = key; `load_quantized_model` reads each group once and
/// hands the same `shared_ptr` to its records. `storage_bits` of a record counts its codes at the
/// format's rate, 16 bits per own fp16 entry and scale/offset, and 16/shared_by bits per shared entry —
/// exactly the bits the pipelines count (`cejd_expert_bits`, `kbvq_expert_bits`).
///
/// A new format is one entry of `detail::expert_formats` (name, the recipe's packed format it stands
/// for, storage bits, builder); `build_linear`, the saver and the loader find it there.
///
/// Threads: none; the operators are immutable after construction (const apply is thread-safe).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gemm.hpp>
#include <lowbit/io/safetensors.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Named fp16-exact tensors of an expert record (vectors as one-column matrices).
using expert_tensor_map = std::map<std::string, matrix_f>;

/// The tensors an expert-format record stores besides its codes, scale and offset.
struct expert_tensors {
    expert_tensor_map own;                           ///< this linear's tensors by name, fp16-exact
    std::string shared_key;                          ///< tensor-name prefix of the shared group ("" = none)
    std::shared_ptr<const expert_tensor_map> shared; ///< the group's tensors, fp16-exact (null = none)
    int shared_by = 0;                               ///< linears sharing the group (each counts 1/shared_by of it)

    /// True if nothing is stored (the records of the built-in packed and dense formats).
    [[nodiscard]] bool empty() const { return own.empty() && !shared && shared_key.empty() && shared_by == 0; }
    /// Stored bits: 16 per own entry, 16/shared_by per shared entry. O(number of tensors).
    [[nodiscard]] double storage_bits() const {
        double own_entries = 0, shared_entries = 0;
        for (const auto& [k, t] : own) own_entries += static_cast<double>(t.size());
        if (shared)
            for (const auto& [k, t] : *shared) shared_entries += static_cast<double>(t.size());
        return 16.0 * own_entries + (shared_by > 0 ? 16.0 * shared_entries / shared_by : 0.0);
    }
};

namespace detail {
inline bool same_tensor_map(const expert_tensor_map& a, const expert_tensor_map& b) {
    if (a.size() != b.size()) return false;
    for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib)
        if (ia->first != ib->first || ia->second.rows() != ib->second.rows() || ia->second.cols() != ib->second.cols() ||
            !(ia->second.array() == ib->second.array()).all())
            return false;
    return true;
}
} // namespace detail

/// Two `expert_tensors` store the same thing (same own and shared tensors, key and sharing count).
[[nodiscard]] inline bool same_expert_tensors(const expert_tensors& a, const expert_tensors& b) {
    if (a.shared_key != b.shared_key || a.shared_by != b.shared_by || !detail::same_tensor_map(a.own, b.own)) return false;
    if (!a.shared || !b.shared) return !a.shared && !b.shared;
    return a.shared == b.shared || detail::same_tensor_map(*a.shared, *b.shared);
}

/// The stored pieces of an expert-format record (views into a `linear_record`).
struct expert_record_view {
    Eigen::Index rows = 0;                  ///< out features m
    Eigen::Index cols = 0;                  ///< in features n
    std::span<const std::uint8_t> codes;    ///< packed codes (format-specific layout)
    const vector_f& scale;                  ///< per-row scales, fp16-exact
    const vector_f& offset;                 ///< per-row offsets, fp16-exact, or empty
    const expert_tensors& tensors;          ///< own and shared tensors
};

// ---------------------------------------------------------------------------------------------
// CEJD expert: G · (binary1 factor)
// ---------------------------------------------------------------------------------------------

/// MoBiE CEJD expert linear W = G·(μ1ᵀ + diag(α)·B) `[m x n]` (see the file comment): the binary
/// factor `[k x n]` as a `packed_matrix<binary1>` (α = scale, μ = offset), the basis G `[m x k]`
/// shared by `shared_by` experts. Models `LinearOperator`.
/// Error: y equals `gemm(factor, x, act_fp32)·Gᵀ` exactly (same float operations); against the exact
/// product |y − x·Wᵀ| ≤ (n + k + 4)·2⁻²⁴·(|x|·(|μ|1ᵀ + |α|1ᵀ)ᵀ·|G|ᵀ) entrywise (first order).
/// Complexity per call: O(T·k·n) packed kernel + O(T·k·m) basis product; memory: the packed codes,
/// 2k floats and a pointer to the shared G.
class cejd_expert_linear {
public:
    /// \param factor     B with α, μ `[k x n]` (offset required).
    /// \param basis      G `[m x k]`, shared (not copied).
    /// \param shared_by  experts sharing G (≥ 1; G is counted 1/shared_by per expert).
    /// \throws invalid_argument (null basis, no offset, shared_by < 1), shape_error (G cols ≠ k, empty),
    ///         numeric_error (NaN/Inf in G).
    cejd_expert_linear(packed_matrix<binary1> factor, std::shared_ptr<const matrix_f> basis, int shared_by)
        : factor_(std::move(factor)), basis_(std::move(basis)), shared_by_(shared_by) {
        constexpr const char* where = "cejd_expert_linear";
        detail::require(basis_ != nullptr, where, "argument 'basis' is null");
        detail::require(shared_by_ >= 1, where, "shared_by must be >= 1");
        detail::require(factor_.offset().size() == factor_.rows(), where, "the binary factor needs a per-row offset μ");
        detail::require_nonempty(*basis_, where, "basis");
        detail::require_dim(basis_->cols(), factor_.rows(), where, "basis cols (must equal the factor's rows k)");
        detail::require_finite(*basis_, where, "basis");
    }
    [[nodiscard]] Eigen::Index in_features() const { return factor_.cols(); }   ///< n
    [[nodiscard]] Eigen::Index out_features() const { return basis_->rows(); }  ///< m
    [[nodiscard]] Eigen::Index rank() const { return factor_.rows(); }          ///< k

    /// y = x·Wᵀ `[T x m]` for x `[T x n]`. \throws as gemm (NaN/Inf in x, width).
    void apply(const matrix_f& x, matrix_f& y) const {
        if (x.rows() == 0) {
            y.resize(0, out_features());
            return;
        }
        const matrix_f z = gemm(factor_, x, act_fp32{});
        y.resize(x.rows(), out_features());
        y.noalias() = z * basis_->transpose();
    }
    /// k·n code bits + 32·k (fp16 α, μ) + 16·m·k/shared_by (share of G) = `cejd_expert_bits`.
    [[nodiscard]] double storage_bits() const {
        const double k = static_cast<double>(rank());
        return k * static_cast<double>(in_features()) + 32.0 * k +
               16.0 * static_cast<double>(out_features()) * k / static_cast<double>(shared_by_);
    }
    [[nodiscard]] const packed_matrix<binary1>& factor() const { return factor_; }        ///< the packed factor
    [[nodiscard]] const std::shared_ptr<const matrix_f>& basis() const { return basis_; } ///< shared G

private:
    packed_matrix<binary1> factor_;
    std::shared_ptr<const matrix_f> basis_;
    int shared_by_;
};
static_assert(LinearOperator<cejd_expert_linear>);

// ---------------------------------------------------------------------------------------------
// KBVQ expert: shared basis + coefficients, shared-codebook VQ residual, BCOS
// ---------------------------------------------------------------------------------------------

/// Residual path of `kbvq_expert_linear::apply`.
enum class vq_residual_path {
    automatic, ///< lookup for T ≤ 3 tokens and K < m, else decode
    lookup,    ///< per-token table of codeword · x-segment products (K·n mult-adds), n/d lookups per row
    decode     ///< one row of codewords decoded at a time (n floats), multiplied with every token
};

/// Packed VQ indices: `count` indices of `bits` bits each, LSB first, index c at bit c·bits; the
/// last byte zero-padded. \throws invalid_argument (bits outside [1, 16], an index ≥ 2^bits).
[[nodiscard]] inline std::vector<std::uint8_t> pack_vq_indices(std::span<const std::uint32_t> idx, int bits) {
    detail::require(bits >= 1 && bits <= 16, "pack_vq_indices", "bits must lie in [1, 16]");
    std::vector<std::uint8_t> out((idx.size() * static_cast<std::size_t>(bits) + 7) / 8, 0);
    std::size_t at = 0;
    for (const std::uint32_t v : idx) {
        detail::require(v < (1u << bits), "pack_vq_indices", "an index does not fit in the index bits");
        for (int b = 0; b < bits; ++b, ++at)
            if ((v >> b) & 1u) out[at / 8] = static_cast<std::uint8_t>(out[at / 8] | (1u << (at % 8)));
    }
    return out;
}

namespace detail {
/// Index c of a `pack_vq_indices` stream (no bounds check; reads only the 1–3 bytes holding it).
inline std::uint32_t vq_index_at(const std::uint8_t* bytes, std::size_t c, int bits) {
    const std::size_t at = c * static_cast<std::size_t>(bits), byte = at / 8;
    const int shift = static_cast<int>(at % 8); // shift + bits ≤ 23: at most three bytes
    std::uint32_t w = bytes[byte];
    if (shift + bits > 8) w |= static_cast<std::uint32_t>(bytes[byte + 1]) << 8;
    if (shift + bits > 16) w |= static_cast<std::uint32_t>(bytes[byte + 2]) << 16;
    return (w >> shift) & ((1u << bits) - 1u);
}
} // namespace detail

/// The pieces of a KBVQ expert linear (all fp16-exact; see the file comment).
struct kbvq_expert_pieces {
    Eigen::Index rows = 0;                     ///< m
    Eigen::Index cols = 0;                     ///< n
    std::shared_ptr<const matrix_f> basis;     ///< Bₛ `[r x n]` shared, or null (no IDRE)
    matrix_f coeff;                            ///< C `[m x r]`, or empty (no IDRE)
    std::shared_ptr<const matrix_f> codebook;  ///< `[K x d]` shared, K = 2^index_bits
    std::vector<std::uint8_t> codes;           ///< m·n/d indices, `pack_vq_indices` at index_bits
    vector_f scale;                            ///< (m) row scales s
    vector_f beta;                             ///< (m) BCOS β, or empty
    vector_f direction;                        ///< (n) BCOS u, or empty
    int shared_by = 1;                         ///< experts sharing Bₛ and the codebook
};

/// KBVQ-MoE expert linear Ŵ = C·Bₛ + diag(s)·Q + β·uᵀ (see the file comment). Models `LinearOperator`.
/// Error against the exact product of the same pieces: |y − x·Ŵᵀ| ≤ (n + r + 4)·2⁻²⁴·(|x|·|Ŵ|ᵀ_abs)
/// entrywise (first order), |Ŵ|_abs = |C||Bₛ| + |s||Q| + |β||u|ᵀ.
/// Complexity per call (T tokens): O(T·r·(n + m)) + residual O(T·(K·n + m·n/d)) (lookup) or
/// O(m·n + T·m·n) (decode) + O(T·(n + m)); memory: the pieces (codes at index_bits per d weights),
/// one row or one table per call, no `[m x n]` matrix.
class kbvq_expert_linear {
public:
    /// \throws invalid_argument (no codebook, K not a power of two ≤ 2^16, shared_by < 1, β without u),
    ///         shape_error (sizes disagree: d ∤ n, codes bytes, C/Bₛ/s/β/u lengths), numeric_error (NaN/Inf).
    explicit kbvq_expert_linear(kbvq_expert_pieces p, vq_residual_path path = vq_residual_path::automatic)
        : p_(std::move(p)), path_(path) {
        constexpr const char* where = "kbvq_expert_linear";
        const Eigen::Index m = p_.rows, n = p_.cols;
        detail::require<shape_error>(m > 0 && n > 0, where, "empty shape");
        detail::require(p_.shared_by >= 1, where, "shared_by must be >= 1");
        detail::require(p_.codebook != nullptr, where, "the codebook is null");
        const Eigen::Index k = p_.codebook->rows(), d = p_.codebook->cols();
        detail::require(k >= 2 && k <= 65536 && (k & (k - 1)) == 0, where, "the codebook size must be a power of two in [2, 65536]");
        detail::require<shape_error>(d >= 1 && n % d == 0, where, "the codeword dimension must divide the input width");
        detail::require_finite(*p_.codebook, where, "codebook");
        bits_ = 0;
        while ((Eigen::Index{1} << bits_) < k) ++bits_;
        const std::size_t count = static_cast<std::size_t>(m) * static_cast<std::size_t>(n / d);
        detail::require_dim(static_cast<Eigen::Index>(p_.codes.size()),
                            static_cast<Eigen::Index>((count * static_cast<std::size_t>(bits_) + 7) / 8), where, "code bytes");
        detail::require_dim(p_.scale.size(), m, where, "scale length");
        detail::require_finite(p_.scale, where, "scale");
        if (p_.basis || p_.coeff.size()) {
            detail::require(p_.basis != nullptr, where, "coefficients without a shared basis");
            detail::require_dim(p_.basis->cols(), n, where, "basis cols");
            detail::require_dim(p_.coeff.rows(), m, where, "coefficient rows");
            detail::require_dim(p_.coeff.cols(), p_.basis->rows(), where, "coefficient cols (basis rank)");
            detail::require_nonempty(p_.coeff, where, "coeff");
            detail::require_finite(*p_.basis, where, "basis");
            detail::require_finite(p_.coeff, where, "coeff");
        }
        detail::require(p_.beta.size() == 0 || p_.direction.size() != 0, where, "β without a direction u");
        if (p_.beta.size() || p_.direction.size()) {
            detail::require_dim(p_.beta.size(), m, where, "beta length");
            detail::require_dim(p_.direction.size(), n, where, "direction length");
            detail::require_finite(p_.beta, where, "beta");
            detail::require_finite(p_.direction, where, "direction");
        }
    }
    [[nodiscard]] Eigen::Index in_features() const { return p_.cols; }  ///< n
    [[nodiscard]] Eigen::Index out_features() const { return p_.rows; } ///< m
    [[nodiscard]] int index_bits() const { return bits_; }              ///< log2 K
    [[nodiscard]] const kbvq_expert_pieces& pieces() const { return p_; } ///< the stored pieces

    /// y = x·Ŵᵀ `[T x m]` for x `[T x n]`. \throws shape_error (width of x).
    void apply(const matrix_f& x, matrix_f& y) const {
        detail::require_dim(x.cols(), p_.cols, "kbvq_expert_linear::apply", "columns of x");
        const Eigen::Index t_count = x.rows(), m = p_.rows, n = p_.cols;
        const matrix_f& cb = *p_.codebook;
        const Eigen::Index k = cb.rows(), d = cb.cols(), groups = n / d;
        y.setZero(t_count, m);
        if (t_count == 0) return;
        if (p_.basis) {
            const matrix_f z = x * p_.basis->transpose(); // [T x r]
            y.noalias() += z * p_.coeff.transpose();
        }
        const bool lookup = path_ == vq_residual_path::lookup ||
                            (path_ == vq_residual_path::automatic && t_count <= 3 && k < m);
        if (lookup) {
            using col_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
            col_major table(k, groups);
            for (Eigen::Index t = 0; t < t_count; ++t) {
                const Eigen::Map<const col_major> segs(x.row(t).data(), d, groups); // column g = x[g·d, (g+1)·d)
                table.noalias() = cb * segs;
                for (Eigen::Index i = 0; i < m; ++i) {
                    float acc = 0.0f;
                    const std::size_t base = static_cast<std::size_t>(i) * static_cast<std::size_t>(groups);
                    for (Eigen::Index g = 0; g < groups; ++g)
                        acc += table(detail::vq_index_at(p_.codes.data(), base + static_cast<std::size_t>(g), bits_), g);
                    y(t, i) += p_.scale(i) * acc;
                }
            }
        } else {
            vector_f row(n), xr(t_count); // allocated once per call, not per row
            for (Eigen::Index i = 0; i < m; ++i) {
                const std::size_t base = static_cast<std::size_t>(i) * static_cast<std::size_t>(groups);
                for (Eigen::Index g = 0; g < groups; ++g)
                    row.segment(g * d, d) =
                        cb.row(detail::vq_index_at(p_.codes.data(), base + static_cast<std::size_t>(g), bits_)).transpose();
                xr.noalias() = x * row;
                y.col(i) += p_.scale(i) * xr;
            }
        }
        if (p_.beta.size()) {
            const vector_f zu = x * p_.direction; // [T]
            y.noalias() += zu * p_.beta.transpose();
        }
    }
    /// (m·n/d)·index_bits + 16·m (s) + 16·(m·r + m + n) (C, β, u) + 16·(K·d + r·n)/shared_by
    /// = `kbvq_expert_bits` of the pipeline's configuration.
    [[nodiscard]] double storage_bits() const {
        const double m = static_cast<double>(p_.rows), n = static_cast<double>(p_.cols);
        const matrix_f& cb = *p_.codebook;
        double bits = m * n / static_cast<double>(cb.cols()) * bits_ + 16.0 * m;
        bits += 16.0 * static_cast<double>(p_.coeff.size() + p_.beta.size() + p_.direction.size());
        const double shared = static_cast<double>(cb.size()) + (p_.basis ? static_cast<double>(p_.basis->size()) : 0.0);
        return bits + 16.0 * shared / static_cast<double>(p_.shared_by);
    }

private:
    kbvq_expert_pieces p_;
    vq_residual_path path_;
    int bits_ = 0;
};
static_assert(LinearOperator<kbvq_expert_linear>);

// ---------------------------------------------------------------------------------------------
// Record formats
// ---------------------------------------------------------------------------------------------

namespace detail {

/// A shared tensor of a view's group, aliasing the group's `shared_ptr` (no copy), or null.
inline std::shared_ptr<const matrix_f> shared_tensor(const expert_record_view& v, const std::string& name) {
    if (!v.tensors.shared) return nullptr;
    const auto it = v.tensors.shared->find(name);
    if (it == v.tensors.shared->end()) return nullptr;
    return std::shared_ptr<const matrix_f>(v.tensors.shared, &it->second);
}

/// Checks that a view's own and shared tensors are exactly the names in `own_allowed` / `shared_allowed`
/// (`own_required` / `shared_required` present). \throws invalid_argument naming the format.
inline void check_tensor_names(const expert_record_view& v, const char* format, std::initializer_list<const char*> own_allowed,
                               std::initializer_list<const char*> shared_allowed, std::initializer_list<const char*> shared_required) {
    const std::string where = std::string("record format '") + format + "'";
    auto allowed = [](std::initializer_list<const char*> names, const std::string& k) {
        for (const char* n : names)
            if (k == n) return true;
        return false;
    };
    for (const auto& [k, t] : v.tensors.own)
        require(allowed(own_allowed, k), where.c_str(), "unexpected tensor '" + k + "'");
    require(v.tensors.shared != nullptr && v.tensors.shared_by >= 1 && !v.tensors.shared_key.empty(), where.c_str(),
            "needs a shared tensor group (key, tensors, shared_by >= 1)");
    for (const auto& [k, t] : *v.tensors.shared)
        require(allowed(shared_allowed, k), where.c_str(), "unexpected shared tensor '" + k + "'");
    for (const char* n : shared_required)
        require(v.tensors.shared->count(n) != 0, where.c_str(), std::string("missing shared tensor '") + n + "'");
}

inline cejd_expert_linear cejd_from_view(const expert_record_view& v) {
    check_tensor_names(v, "cejd_binary1", {}, {"basis"}, {"basis"});
    packed_matrix<binary1>::buffer bytes(v.codes.begin(), v.codes.end());
    auto basis = shared_tensor(v, "basis");
    require_dim(basis->rows(), v.rows, "record format 'cejd_binary1'", "basis rows (must equal the record's rows)");
    packed_matrix<binary1> factor(v.scale.size(), v.cols, std::move(bytes), v.scale, v.offset);
    return cejd_expert_linear(std::move(factor), std::move(basis), v.tensors.shared_by);
}

inline vector_f own_vector(const expert_record_view& v, const char* name, Eigen::Index len) {
    const auto it = v.tensors.own.find(name);
    if (it == v.tensors.own.end()) return {};
    require_dim(it->second.cols(), 1, "record format 'kbvq_vq'", "vector tensor cols (one column)");
    require_dim(it->second.rows(), len, "record format 'kbvq_vq'", (std::string("length of ") + name).c_str());
    return it->second.col(0);
}

inline kbvq_expert_linear kbvq_from_view(const expert_record_view& v) {
    check_tensor_names(v, "kbvq_vq", {"coeff", "beta", "direction"}, {"basis", "codebook"}, {"codebook"});
    require(v.offset.size() == 0, "record format 'kbvq_vq'", "stores no offset");
    kbvq_expert_pieces p;
    p.rows = v.rows;
    p.cols = v.cols;
    p.basis = shared_tensor(v, "basis");
    if (const auto it = v.tensors.own.find("coeff"); it != v.tensors.own.end()) p.coeff = it->second;
    p.codebook = shared_tensor(v, "codebook");
    p.codes.assign(v.codes.begin(), v.codes.end());
    p.scale = v.scale;
    p.beta = own_vector(v, "beta", v.rows);
    p.direction = own_vector(v, "direction", v.cols);
    require((p.beta.size() != 0) == (p.direction.size() != 0), "record format 'kbvq_vq'", "stores β and u together");
    p.shared_by = v.tensors.shared_by;
    return kbvq_expert_linear(std::move(p));
}

/// One expert record format: its name, the packed format of the recipe weight scheme it stands for
/// (so `record_recipe_mismatch` accepts it where the recipe stores that format), its stored bits and
/// its operator. The bits and builder throw invalid_argument / shape_error / numeric_error on an
/// inconsistent record.
struct expert_format {
    std::string_view name;                                                  ///< `linear_record::format`
    std::string_view stands_for;                                            ///< the recipe's packed format
    double (*storage_bits)(const expert_record_view&);                      ///< bits stored
    std::shared_ptr<const linear_operator> (*build)(const expert_record_view&); ///< the operator
};

/// The expert formats (one entry per format).
inline constexpr expert_format expert_formats[] = {
    {"cejd_binary1", "binary1", [](const expert_record_view& v) { return cejd_from_view(v).storage_bits(); },
     [](const expert_record_view& v) { return make_linear(cejd_from_view(v)); }},
    {"kbvq_vq", "int4", [](const expert_record_view& v) { return kbvq_from_view(v).storage_bits(); },
     [](const expert_record_view& v) { return make_linear(kbvq_from_view(v)); }},
};

/// The expert format named `name`, or null.
inline const expert_format* find_expert_format(std::string_view name) {
    for (const auto& f : expert_formats)
        if (f.name == name) return &f;
    return nullptr;
}

/// True if `format` is an expert format standing for the recipe's packed format `want`.
inline bool expert_format_stands_for(std::string_view format, std::string_view want) {
    const expert_format* f = find_expert_format(format);
    return f != nullptr && f->stands_for == want;
}

/// The operator of an expert record; `plain` = the recipe runs fp32 activations, no rotation and the
/// record has no low-rank term (the only setting the expert formats implement).
/// \throws invalid_argument (not plain), as the format's builder.
inline std::shared_ptr<const linear_operator> build_expert_linear(const expert_format& f, const expert_record_view& v,
                                                                  bool plain) {
    require(plain, "build_linear", "record format '" + std::string(f.name) +
                                       "' runs fp32 activations without rotation or low-rank term only");
    return f.build(v);
}

inline std::vector<std::byte> expert_f16_bytes(const matrix_f& x) {
    std::vector<std::byte> out(static_cast<std::size_t>(x.size()) * 2);
    for (Eigen::Index i = 0; i < x.size(); ++i) {
        const Eigen::half h(x.data()[i]);
        std::memcpy(out.data() + 2 * i, &h, 2);
    }
    return out;
}

inline std::string join_names(const expert_tensor_map& m) {
    std::string s;
    for (const auto& [k, t] : m) s += (s.empty() ? "" : ",") + k;
    return s;
}

inline std::vector<std::string> split_names(const std::string& s) {
    std::vector<std::string> out;
    std::size_t at = 0;
    while (at <= s.size() && !s.empty()) {
        const auto next = s.find(',', at);
        out.push_back(s.substr(at, next == std::string::npos ? std::string::npos : next - at));
        if (next == std::string::npos) break;
        at = next + 1;
    }
    return out;
}

/// Writes record `name`'s expert tensors (see the file comment); the shared group only the first time
/// its key is seen (`written`). \throws invalid_argument (a key reused for a different group, names
/// that are not valid tensor names), as safetensors_writer::add.
inline void write_expert_tensors(io::safetensors_writer& out, const std::string& name, const expert_tensors& t,
                                 std::map<std::string, std::shared_ptr<const expert_tensor_map>>& written) {
    if (t.empty()) return;
    auto add = [&](const std::string& key, const matrix_f& x) {
        out.add(key, io::st_dtype::F16, {static_cast<std::uint64_t>(x.rows()), static_cast<std::uint64_t>(x.cols())},
                expert_f16_bytes(x));
    };
    if (!t.own.empty()) {
        out.set_metadata(name + ".tensors", join_names(t.own));
        for (const auto& [k, x] : t.own) add(name + ".t." + k, x);
    }
    if (t.shared) {
        require(!t.shared_key.empty(), "save_quantized_model", "record '" + name + "' has shared tensors without a key");
        out.set_metadata(name + ".shared", t.shared_key);
        const auto it = written.find(t.shared_key);
        if (it != written.end()) {
            require(it->second == t.shared || same_tensor_map(*it->second, *t.shared), "save_quantized_model",
                    "shared tensor group '" + t.shared_key + "' differs between its records");
            return;
        }
        written.emplace(t.shared_key, t.shared);
        out.set_metadata(t.shared_key + ".tensors", join_names(*t.shared));
        out.set_metadata(t.shared_key + ".shared_by", std::to_string(t.shared_by));
        for (const auto& [k, x] : *t.shared) add(t.shared_key + "." + k, x);
    }
}

/// Reads record `name`'s expert tensors (`write_expert_tensors`' layout); each shared group once
/// (`read`: every record of a group gets the same shared_ptr). \throws format_error (missing or
/// malformed tensor or metadata, non-F16, NaN/Inf).
inline void read_expert_tensors(const io::safetensors_file& f, const std::string& name, expert_tensors& t,
                                std::map<std::string, std::pair<std::shared_ptr<const expert_tensor_map>, int>>& read) {
    const auto& md = f.metadata();
    auto fail = [](const std::string& what) { throw format_error("lowbit: load_quantized_model: " + what); };
    auto f16 = [&](const std::string& key) {
        if (!f.contains(key)) fail("tensor '" + key + "' is missing");
        const auto v = f.tensor(key);
        if (v.dtype != io::st_dtype::F16 || v.shape.size() != 2) fail("'" + key + "' must be an F16 matrix");
        matrix_f x(static_cast<Eigen::Index>(v.shape[0]), static_cast<Eigen::Index>(v.shape[1]));
        if (v.bytes.size() != static_cast<std::size_t>(x.size()) * 2) fail("'" + key + "' has the wrong byte size");
        for (Eigen::Index i = 0; i < x.size(); ++i) {
            Eigen::half h;
            std::memcpy(&h, v.bytes.data() + 2 * i, 2);
            x.data()[i] = static_cast<float>(h);
        }
        if (!x.allFinite()) fail("'" + key + "' holds NaN or Inf");
        return x;
    };
    if (const auto it = md.find(name + ".tensors"); it != md.end())
        for (const std::string& k : split_names(it->second)) {
            if (k.empty() || t.own.count(k)) fail("metadata '" + name + ".tensors' is malformed");
            t.own[k] = f16(name + ".t." + k);
        }
    const auto sk = md.find(name + ".shared");
    if (sk == md.end()) return;
    t.shared_key = sk->second;
    if (t.shared_key.empty()) fail("metadata '" + name + ".shared' is empty");
    auto it = read.find(t.shared_key);
    if (it == read.end()) {
        const auto names = md.find(t.shared_key + ".tensors");
        const auto by = md.find(t.shared_key + ".shared_by");
        if (names == md.end() || by == md.end()) fail("shared group '" + t.shared_key + "' has no metadata");
        auto group = std::make_shared<expert_tensor_map>();
        for (const std::string& k : split_names(names->second)) {
            if (k.empty() || group->count(k)) fail("metadata '" + t.shared_key + ".tensors' is malformed");
            (*group)[k] = f16(t.shared_key + "." + k);
        }
        char* end = nullptr;
        const long n = std::strtol(by->second.c_str(), &end, 10);
        if (by->second.empty() || *end != '\0' || n < 1 || n > 1'000'000)
            fail("metadata '" + t.shared_key + ".shared_by' is not a positive integer");
        it = read.emplace(t.shared_key, std::pair{std::shared_ptr<const expert_tensor_map>(std::move(group)), static_cast<int>(n)}).first;
    }
    t.shared = it->second.first;
    t.shared_by = it->second.second;
}

/// Checks that every shared group of `records` (a map name → `linear_record`) is held by exactly
/// `shared_by` records, all with the same tensors. Returns why not, or "".
template <class Records>
std::string expert_sharing_mismatch(const Records& records) {
    std::map<std::string, std::pair<const expert_tensors*, int>> groups;
    for (const auto& [name, rec] : records) {
        const expert_tensors& t = rec.expert;
        if (!t.shared) continue;
        auto [it, fresh] = groups.emplace(t.shared_key, std::pair{&t, 0});
        if (!fresh && (it->second.first->shared_by != t.shared_by ||
                       !(it->second.first->shared == t.shared || same_tensor_map(*it->second.first->shared, *t.shared))))
            return "shared tensor group '" + t.shared_key + "' differs between its records (e.g. '" + name + "')";
        ++it->second.second;
    }
    for (const auto& [key, g] : groups)
        if (g.second != g.first->shared_by)
            return "shared tensor group '" + key + "' is held by " + std::to_string(g.second) + " records, its shared_by is " +
                   std::to_string(g.first->shared_by);
    return {};
}

} // namespace detail

LOWBIT_END_NAMESPACE
