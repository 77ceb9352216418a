// Tests for lowbit/model/moe_experts.hpp. Oracles: the dense expert weight assembled in double from
// the same fp16 / code pieces (y = x·Ŵᵀ in double), with the first-order float bound
// (accumulation length + 4)·2⁻²⁴·(|x|·|Ŵ|ᵀ) built from the pieces' absolute values; the existing packed
// binary kernel (`gemm` on the same packed factor, bit-exact); the pipelines' counted bits
// (cejd_expert_bits, kbvq_expert_bits); on the real checkpoint, the model whose experts are dense
// FP32 copies of the oracle weights (the former dense-fallback records), a save → reload cycle
// (bit-identical logits, each shared group stored once) and hand-corrupted files.
#include <lowbit/model/checkpoint.hpp>
#include <lowbit/model/kbvq_moe.hpp>
#include <lowbit/model/mobie.hpp>
#include <lowbit/model/moe_experts.hpp>

#include <doctest/doctest.h>

#include "models.hpp"
#include "real_moe.hpp"
#include "small_moe.hpp"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using lowbit::matrix_f;
using lowbit::vector_f;

constexpr double unit_roundoff = 5.9604644775390625e-08; // 2⁻²⁴

matrix_f fp16_matrix(Eigen::Index r, Eigen::Index c, std::mt19937_64& rng, float sd) {
    matrix_f m = lowbit_test::normal_matrix(r, c, rng, sd);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = lowbit::detail::round_fp16(m.data()[i]);
    return m;
}

vector_f fp16_vector(Eigen::Index n, std::mt19937_64& rng, float sd, bool positive = false) {
    matrix_f m = fp16_matrix(n, 1, rng, sd);
    vector_f v = m.col(0);
    if (positive) v = v.cwiseAbs().array() + lowbit::detail::round_fp16(0.01f);
    for (Eigen::Index i = 0; i < v.size(); ++i) v(i) = lowbit::detail::round_fp16(v(i));
    return v;
}

/// Checks |y − x·Wᵀ| ≤ len·u·(|x|·|W|ᵀ_abs) entrywise, with W and |W|_abs in double.
void check_within_bound(const matrix_f& y, const matrix_f& x, const Eigen::MatrixXd& w, const Eigen::MatrixXd& w_abs, double len) {
    const Eigen::MatrixXd xd = x.cast<double>();
    const Eigen::MatrixXd ref = xd * w.transpose();
    const Eigen::MatrixXd bound = len * unit_roundoff * (xd.cwiseAbs() * w_abs.transpose());
    REQUIRE(y.rows() == ref.rows());
    REQUIRE(y.cols() == ref.cols());
    double worst = 0;
    for (Eigen::Index i = 0; i < ref.rows(); ++i)
        for (Eigen::Index j = 0; j < ref.cols(); ++j) {
            const double e = std::fabs(static_cast<double>(y(i, j)) - ref(i, j));
            CHECK(e <= bound(i, j));
            worst = std::max(worst, bound(i, j) > 0 ? e / bound(i, j) : 0.0);
        }
    MESSAGE("worst error / bound = " << worst);
}

struct cejd_case {
    matrix_f basis;          // G [m x k]
    lowbit::matrix_i8 codes; // [k x n]
    vector_f alpha, mu;      // [k]
};

cejd_case make_cejd(Eigen::Index m, Eigen::Index k, Eigen::Index n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    cejd_case c{fp16_matrix(m, k, rng, 0.3f), lowbit::matrix_i8(k, n), fp16_vector(k, rng, 0.05f, true), fp16_vector(k, rng, 0.02f)};
    std::bernoulli_distribution coin(0.5);
    for (Eigen::Index i = 0; i < c.codes.size(); ++i) c.codes.data()[i] = coin(rng) ? 1 : -1;
    return c;
}

/// The oracle Ŵ = G·(μ1ᵀ + diag(α)·B) and its absolute-value bound matrix, in double.
std::pair<Eigen::MatrixXd, Eigen::MatrixXd> cejd_dense(const cejd_case& c) {
    const Eigen::MatrixXd f = (c.alpha.cast<double>().asDiagonal() * c.codes.cast<double>()).colwise() + c.mu.cast<double>();
    Eigen::MatrixXd fa = Eigen::MatrixXd::Zero(f.rows(), f.cols());
    fa.colwise() += (c.alpha.cast<double>().cwiseAbs() + c.mu.cast<double>().cwiseAbs());
    return {c.basis.cast<double>() * f, c.basis.cast<double>().cwiseAbs() * fa};
}

struct kbvq_case {
    lowbit::kbvq_expert_pieces p;
    std::vector<std::uint32_t> idx;
};

kbvq_case make_kbvq(Eigen::Index m, Eigen::Index n, Eigen::Index r, Eigen::Index d, int bits, bool idre, bool bcos, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    kbvq_case c;
    auto& p = c.p;
    p.rows = m;
    p.cols = n;
    if (idre) {
        p.basis = std::make_shared<const matrix_f>(fp16_matrix(r, n, rng, 0.2f));
        p.coeff = fp16_matrix(m, r, rng, 0.5f);
    }
    p.codebook = std::make_shared<const matrix_f>(fp16_matrix(Eigen::Index{1} << bits, d, rng, 1.0f));
    std::uniform_int_distribution<std::uint32_t> pick(0, (1u << bits) - 1);
    c.idx.resize(static_cast<std::size_t>(m * n / d));
    for (auto& v : c.idx) v = pick(rng);
    p.codes = lowbit::pack_vq_indices(c.idx, bits);
    p.scale = fp16_vector(m, rng, 0.05f, true);
    if (bcos) {
        p.beta = fp16_vector(m, rng, 0.1f);
        p.direction = fp16_vector(n, rng, 0.05f);
    }
    p.shared_by = 8;
    return c;
}

/// The oracle Ŵ = C·Bₛ + diag(s)·Q + β·uᵀ (Q from the unpacked indices) and its absolute bound matrix.
std::pair<Eigen::MatrixXd, Eigen::MatrixXd> kbvq_dense(const kbvq_case& c) {
    const auto& p = c.p;
    const Eigen::Index d = p.codebook->cols(), groups = p.cols / d;
    Eigen::MatrixXd q(p.rows, p.cols);
    for (Eigen::Index i = 0; i < p.rows; ++i)
        for (Eigen::Index g = 0; g < groups; ++g)
            q.block(i, g * d, 1, d) = p.codebook->row(c.idx[static_cast<std::size_t>(i * groups + g)]).cast<double>();
    Eigen::MatrixXd w = p.scale.cast<double>().asDiagonal() * q;
    Eigen::MatrixXd wa = p.scale.cast<double>().cwiseAbs().asDiagonal() * q.cwiseAbs();
    if (p.basis) {
        w += p.coeff.cast<double>() * p.basis->cast<double>();
        wa += p.coeff.cast<double>().cwiseAbs() * p.basis->cast<double>().cwiseAbs();
    }
    if (p.beta.size()) {
        w += p.beta.cast<double>() * p.direction.cast<double>().transpose();
        wa += p.beta.cast<double>().cwiseAbs() * p.direction.cast<double>().cwiseAbs().transpose();
    }
    return {w, wa};
}

lowbit::linear_record cejd_rec(const cejd_case& c, int experts, const std::string& key = "layers.0.experts.w1.cejd") {
    auto shared = std::make_shared<const lowbit::expert_tensor_map>(lowbit::expert_tensor_map{{"basis", c.basis}});
    return lowbit::detail::cejd_record(lowbit::pack<lowbit::binary1>(c.codes, c.alpha, c.mu), c.basis.rows(), shared, key, experts);
}

} // namespace

TEST_CASE("cejd_expert_linear: the double oracle G·(μ1ᵀ + diag(α)B) within (n + k + 4)·u; bit-exact with gemm(binary1)·Gᵀ") {
    for (auto [m, k, n] : {std::array<Eigen::Index, 3>{24, 24, 32}, {48, 20, 40}, {64, 64, 512}, {16, 7, 300}}) {
        CAPTURE(m);
        CAPTURE(n);
        const cejd_case c = make_cejd(m, k, n, static_cast<std::uint64_t>(m * 1000 + n));
        const auto [w, wa] = cejd_dense(c);
        auto basis = std::make_shared<const matrix_f>(c.basis);
        const auto packed = lowbit::pack<lowbit::binary1>(c.codes, c.alpha, c.mu);
        const lowbit::cejd_expert_linear op(packed, basis, 4);
        CHECK(op.in_features() == n);
        CHECK(op.out_features() == m);
        CHECK(op.rank() == k);
        CHECK(op.basis().get() == basis.get()); // shared, not copied
        CHECK(op.storage_bits() == doctest::Approx(lowbit::cejd_expert_bits(m, n, k, 4)).epsilon(1e-15));
        std::mt19937_64 rng(7);
        for (Eigen::Index t : {1, 2, 3, 4, 33}) {
            const matrix_f x = lowbit_test::normal_matrix(t, n, rng, 1.0f);
            matrix_f y;
            op.apply(x, y);
            check_within_bound(y, x, w, wa, static_cast<double>(n + k + 4));
            const matrix_f z = lowbit::gemm(packed, x, lowbit::act_fp32{});
            const matrix_f y_kernel = z * c.basis.transpose();
            CHECK((y.array() == y_kernel.array()).all());
        }
        matrix_f y0;
        op.apply(matrix_f(0, n), y0);
        CHECK(y0.rows() == 0);
        CHECK(y0.cols() == m);
    }
    const cejd_case c = make_cejd(8, 4, 16, 1);
    const auto packed = lowbit::pack<lowbit::binary1>(c.codes, c.alpha, c.mu);
    CHECK_THROWS_AS(lowbit::cejd_expert_linear(packed, nullptr, 1), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::cejd_expert_linear(packed, std::make_shared<const matrix_f>(c.basis), 0), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::cejd_expert_linear(packed, std::make_shared<const matrix_f>(matrix_f(c.basis.leftCols(3))), 1),
                    lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::cejd_expert_linear(lowbit::pack<lowbit::binary1>(c.codes, c.alpha, vector_f()),
                                               std::make_shared<const matrix_f>(c.basis), 1),
                    lowbit::invalid_argument);
}

TEST_CASE("kbvq_expert_linear: lookup and decode paths against the double oracle C·Bₛ + diag(s)Q + βuᵀ within (n + r + 4)·u") {
    for (bool idre : {true, false})
        for (bool bcos : {true, false})
            for (auto [m, n, d, bits] : {std::array<int, 4>{24, 32, 4, 4}, {64, 48, 2, 6}, {40, 24, 4, 8}}) {
                CAPTURE(idre);
                CAPTURE(bcos);
                CAPTURE(m);
                const kbvq_case c = make_kbvq(m, n, 3, d, bits, idre, bcos, static_cast<std::uint64_t>(m + 7 * n + bits));
                const auto [w, wa] = kbvq_dense(c);
                std::mt19937_64 rng(11);
                for (auto path : {lowbit::vq_residual_path::automatic, lowbit::vq_residual_path::lookup, lowbit::vq_residual_path::decode}) {
                    const lowbit::kbvq_expert_linear op(c.p, path);
                    CHECK(op.index_bits() == bits);
                    CHECK(op.in_features() == n);
                    CHECK(op.out_features() == m);
                    for (Eigen::Index t : {1, 3, 9}) {
                        const matrix_f x = lowbit_test::normal_matrix(t, n, rng, 1.0f);
                        matrix_f y;
                        op.apply(x, y);
                        check_within_bound(y, x, w, wa, static_cast<double>(n + 3 + 4));
                    }
                }
                // bits: those of the pipeline's configuration
                lowbit::kbvq_config cfg;
                cfg.idre = idre;
                cfg.idre_rank = 3;
                cfg.vq_dim = d;
                cfg.vq_index_bits = bits;
                cfg.bcos = bcos;
                CHECK(lowbit::kbvq_expert_linear(c.p).storage_bits() ==
                      doctest::Approx(lowbit::kbvq_expert_bits(m, n, 8, cfg)).epsilon(1e-15));
            }
    // pack_vq_indices: every index read back; bad input refused
    std::vector<std::uint32_t> idx{0, 5, 7, 1, 6, 2, 3};
    const auto bytes = lowbit::pack_vq_indices(idx, 3);
    CHECK(bytes.size() == 3);
    for (std::size_t i = 0; i < idx.size(); ++i) CHECK(lowbit::detail::vq_index_at(bytes.data(), i, 3) == idx[i]);
    for (int bits : {1, 5, 8, 11, 13, 16}) { // indices straddling two and three bytes
        std::mt19937_64 rng(static_cast<std::uint64_t>(bits));
        std::vector<std::uint32_t> v(37);
        for (auto& x : v) x = static_cast<std::uint32_t>(rng() % (1u << bits));
        const auto packed = lowbit::pack_vq_indices(v, bits);
        CHECK(packed.size() == (37 * static_cast<std::size_t>(bits) + 7) / 8);
        for (std::size_t i = 0; i < v.size(); ++i) CHECK(lowbit::detail::vq_index_at(packed.data(), i, bits) == v[i]);
    }
    CHECK_THROWS_AS((void)lowbit::pack_vq_indices(idx, 2), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::pack_vq_indices(idx, 17), lowbit::invalid_argument);
    // inconsistent pieces
    const kbvq_case c = make_kbvq(8, 16, 2, 4, 3, true, true, 3);
    auto bad = c.p;
    bad.codes.pop_back();
    CHECK_THROWS_AS(lowbit::kbvq_expert_linear{bad}, lowbit::shape_error);
    bad = c.p;
    bad.codebook = std::make_shared<const matrix_f>(matrix_f::Ones(6, 4));
    CHECK_THROWS_AS(lowbit::kbvq_expert_linear{bad}, lowbit::invalid_argument);
    bad = c.p;
    bad.codebook = std::make_shared<const matrix_f>(matrix_f::Ones(8, 3));
    CHECK_THROWS_AS(lowbit::kbvq_expert_linear{bad}, lowbit::shape_error);
    bad = c.p;
    bad.direction = vector_f();
    CHECK_THROWS_AS(lowbit::kbvq_expert_linear{bad}, lowbit::invalid_argument);
    bad = c.p;
    bad.coeff = matrix_f::Ones(8, 3);
    CHECK_THROWS_AS(lowbit::kbvq_expert_linear{bad}, lowbit::shape_error);
    const lowbit::kbvq_expert_linear ok(c.p);
    matrix_f y;
    CHECK_THROWS_AS(ok.apply(matrix_f::Ones(2, 12), y), lowbit::shape_error);
}

TEST_CASE("expert records: build_linear, counted bits, recipe checks, sharing checks") {
    const cejd_case c = make_cejd(24, 12, 32, 5);
    lowbit::mobie_config mc;
    const lowbit::recipe binary = lowbit::mobie_recipe(mc);
    const lowbit::linear_record rec = cejd_rec(c, 4);
    CHECK(rec.format == "cejd_binary1");
    CHECK(rec.rows == 24);
    CHECK(rec.cols == 32);
    CHECK(rec.storage_bits() == doctest::Approx(lowbit::cejd_expert_bits(24, 32, 12, 4)).epsilon(1e-15));
    const auto op = lowbit::build_linear(binary, rec, std::nullopt);
    CHECK(op->storage_bits() == rec.storage_bits());
    const auto* adapter = dynamic_cast<const lowbit::detail::linear_adapter<lowbit::cejd_expert_linear>*>(op.get());
    REQUIRE(adapter != nullptr);
    CHECK(adapter->get().basis().get() == &rec.expert.shared->at("basis")); // aliases the record's group
    CHECK(lowbit::detail::record_recipe_mismatch(binary, rec).empty());
    CHECK(!lowbit::detail::record_recipe_mismatch(lowbit::kbvq_recipe(lowbit::kbvq_config{}), rec).empty());
    // expert tensors on a format that does not store them
    lowbit::linear_record plain = lowbit::detail::packed_record(lowbit::pack<lowbit::binary1>(c.codes, c.alpha, c.mu));
    CHECK(lowbit::detail::record_recipe_mismatch(binary, plain).empty());
    plain.expert = rec.expert;
    CHECK(!lowbit::detail::record_recipe_mismatch(binary, plain).empty());
    // an inconsistent record
    auto no_group = rec;
    no_group.expert = {};
    CHECK_THROWS_AS((void)lowbit::build_linear(binary, no_group, std::nullopt), lowbit::invalid_argument);
    auto wrong_rows = rec;
    wrong_rows.rows = 23;
    CHECK_THROWS_AS((void)lowbit::build_linear(binary, wrong_rows, std::nullopt), lowbit::shape_error);
    auto extra = rec;
    extra.expert.own.emplace("coeff", matrix_f::Ones(2, 2));
    CHECK_THROWS_AS((void)lowbit::build_linear(binary, extra, std::nullopt), lowbit::invalid_argument);
    lowbit::recipe int_act = binary;
    int_act.activation = lowbit::activation_kind::int_symmetric;
    CHECK_THROWS_AS((void)lowbit::build_linear(int_act, rec, std::nullopt), lowbit::invalid_argument);
    // sharing: a group of shared_by = 2 held by one or two records
    std::map<std::string, lowbit::linear_record> recs;
    recs["a"] = cejd_rec(c, 2);
    CHECK(!lowbit::detail::expert_sharing_mismatch(recs).empty());
    recs["b"] = recs["a"];
    CHECK(lowbit::detail::expert_sharing_mismatch(recs).empty());
    recs["b"] = cejd_rec(make_cejd(24, 12, 32, 6), 2); // same key, other basis
    CHECK(!lowbit::detail::expert_sharing_mismatch(recs).empty());
}

TEST_CASE("real qwen3moe-18M-en: packed CEJD and KBVQ experts = the dense-fallback model within float rounding; shared groups stored once; reload bit-identical; corrupt files refused") {
    auto real = lowbit_test::open_real_moe();
    const auto& fp = real.fp;
    const std::span<const int> probe(real.dev.data(), 64);
    lowbit::mobie_config mc;
    mc.glas = false; // not what is tested here (and the slowest part)
    mc.calib_window = 256;
    mc.calib_windows = 1;
    lowbit::kbvq_config kc = lowbit::kbvq_preset(2);
    kc.calib_window = 256;
    kc.calib_windows = 1;
    std::vector<std::pair<std::string, lowbit::moe_expert_result>> runs;
    runs.emplace_back("cejd_binary1", lowbit::quantize_mobie(fp.model, real.calib, mc));
    runs.emplace_back("kbvq_vq", lowbit::quantize_kbvq_moe(fp.model, real.calib, kc));
    const auto& cfg = fp.model.config;
    int moe_layers = 0;
    for (const auto& b : fp.model.blocks) moe_layers += b.is_moe() ? 1 : 0;
    REQUIRE(moe_layers > 0);
    for (const auto& [format, r] : runs) {
        CAPTURE(format);
        // the dense-fallback model: every expert a dense FP32 copy of its oracle weight
        lowbit::llama_model dense = r.q.model;
        double counted = 0, weights = 0;
        for (int l = 0; l < cfg.n_layers; ++l)
            for (const lowbit::linear_id& id : dense.block_linears(l)) {
                if (id.expert < 0) continue;
                const auto& rec = r.q.records.at(id.name());
                REQUIRE(rec.format == format);
                const auto& tensors = rec.expert;
                Eigen::MatrixXd w;
                if (format == "cejd_binary1") {
                    cejd_case c;
                    c.basis = tensors.shared->at("basis");
                    const auto pw = lowbit::packed_matrix<lowbit::binary1>(
                        rec.scale.size(), rec.cols, lowbit::packed_matrix<lowbit::binary1>::buffer(rec.codes.begin(), rec.codes.end()),
                        rec.scale, rec.offset);
                    c.codes = lowbit::detail::decode_codes(pw);
                    c.alpha = rec.scale;
                    c.mu = rec.offset;
                    w = cejd_dense(c).first;
                } else {
                    kbvq_case c;
                    c.p.rows = rec.rows;
                    c.p.cols = rec.cols;
                    if (tensors.shared->count("basis")) {
                        c.p.basis = std::make_shared<const matrix_f>(tensors.shared->at("basis"));
                        c.p.coeff = tensors.own.at("coeff");
                    }
                    c.p.codebook = std::make_shared<const matrix_f>(tensors.shared->at("codebook"));
                    c.p.scale = rec.scale;
                    if (tensors.own.count("beta")) {
                        c.p.beta = tensors.own.at("beta").col(0);
                        c.p.direction = tensors.own.at("direction").col(0);
                    }
                    const int bits = static_cast<int>(std::lround(std::log2(static_cast<double>(c.p.codebook->rows()))));
                    const Eigen::Index groups = rec.rows * rec.cols / c.p.codebook->cols();
                    for (Eigen::Index g = 0; g < groups; ++g)
                        c.idx.push_back(lowbit::detail::vq_index_at(rec.codes.data(), static_cast<std::size_t>(g), bits));
                    w = kbvq_dense(c).first;
                }
                dense.set_linear(id, lowbit::make_linear(lowbit::dense_linear(w.cast<float>())));
                counted += rec.storage_bits();
                weights += static_cast<double>(rec.rows * rec.cols);
            }
        CHECK(r.expert_bits_per_weight == doctest::Approx(counted / weights).epsilon(1e-12));
        lowbit::kv_cache c1(cfg), c2(cfg);
        const matrix_f y_packed = lowbit::forward(r.q.model, c1, probe);
        const matrix_f y_dense = lowbit::forward(dense, c2, probe);
        const double diff = (y_packed - y_dense).cwiseAbs().maxCoeff(), scale = y_dense.cwiseAbs().maxCoeff();
        const double ppl_packed = lowbit::perplexity(r.q.model, real.dev, 256, 2).perplexity;
        const double ppl_dense = lowbit::perplexity(dense, real.dev, 256, 2).perplexity;
        MESSAGE(format << ": max |Δlogit| " << diff << " of max |logit| " << scale << "; perplexity packed " << ppl_packed
                       << ", dense " << ppl_dense);
        CHECK(diff <= 1e-3 * scale);
        CHECK(ppl_packed == doctest::Approx(ppl_dense).epsilon(1e-4));
        // save: each shared group once, no expert weight; reload: same records, same sharing, same logits
        const auto path = std::filesystem::temp_directory_path() / ("lowbit_test_moe_experts_" + format + ".safetensors");
        lowbit::save_quantized_model(path, r.q);
        {
            const auto f = lowbit::io::safetensors_file::read(path);
            int groups = 0, dense_weights = 0;
            for (const auto& n : f.names()) {
                if (n.find(".experts.w") != std::string::npos && n.ends_with(".codebook")) ++groups;
                if (n.find(".experts.w") != std::string::npos && n.ends_with(".cejd.basis")) ++groups;
                if (n.find(".experts.") != std::string::npos && n.ends_with(".weight")) ++dense_weights;
            }
            CHECK(groups == 3 * moe_layers);
            CHECK(dense_weights == 0);
        }
        const auto back = lowbit::load_quantized_model(path);
        REQUIRE(back.records.size() == r.q.records.size());
        for (const auto& [k, rec] : r.q.records) {
            CHECK(lowbit_test::same_record(rec, back.records.at(k)));
            CHECK(lowbit::same_expert_tensors(rec.expert, back.records.at(k).expert));
        }
        const std::string e0 = lowbit::linear_id{1, lowbit::linear_slot::w1, 0}.name(), e1 = lowbit::linear_id{1, lowbit::linear_slot::w1, 1}.name();
        if (back.records.count(e0) && back.records.count(e1))
            CHECK(back.records.at(e0).expert.shared.get() == back.records.at(e1).expert.shared.get()); // read once
        CHECK(back.model.bits_per_weight() == doctest::Approx(r.bits_per_weight).epsilon(1e-12));
        lowbit::kv_cache c3(cfg);
        CHECK((lowbit::forward(back.model, c3, probe).array() == y_packed.array()).all());
        // corrupt files: truncated, a shared group's count, a record pointing at a missing group
        std::ifstream in(path, std::ios::binary);
        const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        in.close();
        auto write_variant = [&](const std::string& content) {
            const auto p = std::filesystem::temp_directory_path() / ("lowbit_test_moe_experts_bad_" + format + ".safetensors");
            std::ofstream(p, std::ios::binary) << content;
            return p;
        };
        const auto truncated = write_variant(bytes.substr(0, bytes.size() - 1000));
        CHECK_THROWS_AS((void)lowbit::load_quantized_model(truncated), lowbit::format_error);
        const std::string suffix = format == "cejd_binary1" ? ".cejd" : ".kbvq";
        const std::string group = "layers.1.experts.w1" + suffix;
        const std::string count_key = "\"" + group + ".shared_by\":\"" + std::to_string(cfg.n_experts) + "\"";
        auto at = bytes.find(count_key);
        REQUIRE(at != std::string::npos);
        std::string wrong = bytes;
        wrong.replace(at, count_key.size(), "\"" + group + ".shared_by\":\"" + std::to_string(cfg.n_experts + 1) + "\"");
        if (wrong.size() == bytes.size()) {
            CHECK_THROWS_AS((void)lowbit::load_quantized_model(write_variant(wrong)), lowbit::format_error);
        }
        const std::string ref_key = "\"" + e1 + ".shared\":\"" + group + "\"";
        at = bytes.find(ref_key);
        REQUIRE(at != std::string::npos);
        wrong = bytes;
        wrong.replace(at, ref_key.size(), "\"" + e1 + ".shared\":\"" + group.substr(0, group.size() - 1) + "X\"");
        const auto missing = write_variant(wrong);
        CHECK_THROWS_AS((void)lowbit::load_quantized_model(missing), lowbit::format_error);
        std::filesystem::remove(missing);
        std::filesystem::remove(truncated);
        std::filesystem::remove(path);
    }
}
