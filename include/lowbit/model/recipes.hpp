#pragma once
/// \file model/recipes.hpp
/// Recipes: short compositions of lowbit's policies that turn an FP32 Llama model into a quantized
/// one whose block linears are `quantized_linear` layers running the packed kernels.
///
/// A recipe picks, for every block linear (wq, wk, wv, wo, w1, w2, w3; embedding, norms and the
/// classifier stay FP32):
/// - a rotation: none; an online randomised Hadamard transform H of the input width (weights
///   stored as W·H, activations rotated at run time: (xH)(WH)ᵀ = xWᵀ); the Hadamard followed by a
///   Kronecker rotation K = Cᵀ ⊗ B learned per linear from its weights (KOTMS for ternary, OKT for
///   binary; TWLA/BWLA give every linear its own factors); or a TORQ rotation learned per linear from
///   its calibration inputs (MXFP4 activations; input widths that are not multiples of 32 keep the
///   Hadamard). Learned rotations are stored with the layer (fp16 entries, re-orthonormalised by the
///   polar factor when the layer is built, so saving and loading rebuild the same transform) and
///   counted in its bits;
/// - a weight quantizer and solver: RTN, GPTQ (Hessian from calibration inputs, layer by layer on
///   the partially quantized model), symmetric ternary (absmean), asymmetric ternary E2M-ATQ
///   (per-row μ, α), binary (per-row μ, α; ARB refinement under GPTQ), MXFP4; optionally a PSP
///   low-rank correction around the binarizer;
/// - an activation policy: FP32, symmetric per-token int-k inside the integer kernel, asymmetric
///   per-token int-k fake quantization (docs/sources.md §1.3), or MXFP4 fake quantization; for the
///   integer kernel optionally one width per block chosen by ILA-AMP (`recipe::ila_mean_bits`,
///   model/ila_amp.hpp) and recorded per linear (`linear_record::act_bits`).
/// Optionally (`recipe::nli`) the forward pass's SiLU, softmax exp and RMSNorm rsqrt run as NLI
/// piecewise-linear tables (`recipe_nonlinear_ops`); optionally (`recipe::residual_rotation`) the
/// residual stream is first rotated offline and the rotation folded into the embedding, the
/// classifier and the block linears (QuaRot; model/residual_rotation.hpp: embedding, classifier and
/// norms then hold the rotated model's values).
///
/// Storage and the effective bits per weight: codes are packed in the kernels' formats
/// (ternary base-3 at 1.6 bits, 2-bit ternary, 1-bit binary, 4-bit int); per-row scales α and
/// offsets μ and low-rank factors are rounded to fp16 and counted at 16 bits. `storage_bits` of a
/// layer is the serialized size: nominal code bits over the real columns + 16 per stored scale,
/// offset and factor entry (the in-memory kernel layout additionally pads rows to 256/320 weights).
/// MXFP4 weights count 4.25 bits (E2M1 + one E8M0 per 32).
///
/// Calibration tokens must not overlap the evaluation text (the demo calibrates on the dev text
/// after the 60,000 characters it evaluates).
///
/// Compile time: `quantize_model`, `build_linear`, `load_quantized_model` and their helpers are
/// function templates with one defaulted, unused parameter (`template <class = void>`; call them as
/// ordinary functions), so the solvers, rotation learners and every packed-kernel combination are
/// compiled only in a translation unit that calls them (docs/compile_time.md).

#include <lowbit/activations.hpp>
#include <lowbit/asym_ternary.hpp>
#include <lowbit/billm.hpp>
#include <lowbit/binary.hpp>
#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gemm.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/hadamard.hpp>
#include <lowbit/io/safetensors.hpp>
#include <lowbit/kotms.hpp>
#include <lowbit/kronecker.hpp>
#include <lowbit/lowrank.hpp>
#include <lowbit/model/ila_amp.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/model/moe_experts.hpp>
#include <lowbit/model/residual_rotation.hpp>
#include <lowbit/model/scale_tuning.hpp>
#include <lowbit/mxfp.hpp>
#include <lowbit/okt.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/quantized_linear.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/salient_binary.hpp>
#include <lowbit/salient_ternary.hpp>
#include <lowbit/specquant.hpp>
#include <lowbit/ternary.hpp>
#include <lowbit/torq.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>
#include <Eigen/SVD>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <cerrno>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Weight quantizer of a recipe.
enum class weight_scheme {
    fp32,            ///< keep FP32 (dense Eigen GEMM)
    int4,            ///< int4: symmetric per row (scale max|w|/7), or asymmetric per group of `group_size` columns
    absmean_ternary, ///< BitNet absmean ternary per row, packed ternary
    e2m_atq,         ///< asymmetric ternary μ + α·t per row (E2M-ATQ), packed ternary with offsets
    sign_binary,     ///< μ + α·sign(w − μ) per row, packed binary with offsets
    arb_binary,      ///< ARB-refined binary μ + α·b per row, packed binary with offsets
    mxfp4,           ///< OCP MXFP4 (E2M1, E8M0 per 32), dequantized dense
    tra_ternary,     ///< TRA-GPTQ (salient / non-salient groups, order-2 salient residuals), packed "salient_ternary"
    billm_binary,    ///< BiLLM (salient columns order-2 binary, non-salient split in two), packed "salient_binary"
};

/// Solver around the weight quantizer.
enum class solver_kind {
    rtn,  ///< round each row on its own
    gptq, ///< GPTQ column-wise error feedback with the calibration Hessian
};

/// Online rotation of every block linear's input.
enum class rotation_kind {
    none,                ///< no rotation
    randomized_hadamard, ///< x ↦ x·D_s·H/√n (hadamard.hpp; non-power-of-2 widths by H_K ⊗ H_2^m)
    kotms,               ///< randomised Hadamard, then KOTMS Kronecker factors learned per linear (kotms.hpp)
    okt,                 ///< randomised Hadamard, then OKT Kronecker factors learned per linear (okt.hpp)
    torq,                ///< TORQ learned per linear from its calibration inputs (torq.hpp); Hadamard if 32 ∤ n
};

/// Activation policy of every block linear.
enum class activation_kind {
    fp32,            ///< no activation quantization
    int_symmetric,   ///< symmetric per-token int-k inside the integer kernel (k ∈ 2..8)
    int_asymmetric,  ///< asymmetric per-token int-k fake quantization (§1.3, clip ratio)
    mxfp4,           ///< MXFP4 fake quantization of the activations (blocks of 32 along the input)
};

/// A recipe: what happens to each block linear (see the file comment). Plain data.
struct recipe {
    std::string name;                              ///< command-line name
    std::string description;                       ///< one line for tables
    weight_scheme weights = weight_scheme::fp32;   ///< weight quantizer
    solver_kind solver = solver_kind::rtn;         ///< solver
    rotation_kind rotation = rotation_kind::none;  ///< online rotation
    activation_kind activation = activation_kind::fp32; ///< activation policy
    int act_bits = 8;          ///< bits of integer activations (every block; unused under ILA-AMP)
    float act_clip = 1.0f;     ///< clip ratio of asymmetric activations, (0, 1]
    int low_rank = 0;          ///< PSP low-rank rank around binary weights (0: none)
    int psp_iterations = 4;    ///< PSP alternations (reading (a)) or gradient steps (reading (b))
    /// PSP reading (b), the gradient form (`psp_refine_gradient`: LoRA-initialised factors, alternating
    /// exact line-search steps with the binarizer straight-through, rank re-projection) instead of
    /// reading (a), the proximal alternation (`psp_refine`). BWLA's text allows both (docs/lowrank.md).
    bool psp_gradient = false;
    bool base3 = true;         ///< ternary codes at 1.6 bits (base 3) instead of 2
    double damp = 0.01;        ///< GPTQ damping λ
    bool act_order = true;     ///< GPTQ activation order (columns by diag H descending)
    /// int4: 0 = one symmetric scale per row; G > 0 = asymmetric int4 with an fp16 scale and
    /// offset per row and per G contiguous input columns (GPTQ with static groups, so act order keeps
    /// the groups contiguous). G must divide every linear's input width.
    /// BiLLM weights: the block width (salient columns, groups and their fp16 scales per row and block of
    /// G processed columns; the last block may be narrower); 0 = one block per row.
    int group_size = 0;
    /// int4 groups: clip-ratio candidates linspace(1, 0.5, clip_grid) per row and group, the one
    /// minimising Σ_j H_jj·(w_ij − q_ij)² kept (RTN: unweighted); 0 or 1 = plain min/max range.
    int clip_grid = 0;
    std::uint64_t seed = 0;    ///< rotation seed
    /// KOTMS/OKT: learn only when both Kronecker factors of the size rule are ≤ this; 0 (default):
    /// learn at every size. A linear whose factors exceed a set cap runs the Hadamard only, and its
    /// record says so (`linear_record::rotation_status`, saved with the model, on the progress line).
    int rotation_max_factor = 0;
    /// KOTMS/OKT: learn only when the fp16 factors (16·(l² + r²) bits) add at most this many bits per
    /// weight to their linear; 0: no bound. LLM-width layers add little (a 512² layer's (8, 64) pair
    /// 0.25, 512×1536's (8, 64) 0.08, a 4096² layer's (8, 512) 0.25); the default 2.5 refuses only a
    /// rotation that would cost more than the ternary codes it serves (stories260K's 64×172 w2: (43, 4)
    /// would add 2.71; its 32×64 wk/wv (16, 4) add 2.12 and are learned). Said in the record as above.
    double rotation_max_bits = 2.5;
    bool hadamard_first = true; ///< KOTMS/OKT: learn after the randomised Hadamard (false: on the raw weights)
    bool nli = false;          ///< NLI operators in the forward pass (SiLU, softmax exp, RMSNorm rsqrt; recipe_nonlinear_ops)
    /// QuaRot: rotate the residual stream offline by the randomised Hadamard of width dim (seed
    /// `seed`) before quantizing, folded into the weights (model/residual_rotation.hpp); nothing runs
    /// at inference time, so such models export to GGUF.
    bool residual_rotation = false;
    /// Under GPTQ, fit each row's parameters with the layer's input Gram S = H/2 (`gptq_options::gram_fit`):
    /// E2M-ATQ's stage 2 ("manifold relocation") weighted by S as TWLA does; ARB binary becomes ARB-X;
    /// BiLLM's groups are re-fitted for e S eᵀ (`billm_options::gram_fit`).
    bool gram_stage2 = false;
    /// After GPTQ (int4, ternary, binary weights): re-fit each row's offset and scale (μ, α) for the final
    /// codes to minimise the layer-output error e S eᵀ on the calibration inputs, S = H/2
    /// (`relocate_e2m_atq`; the codes stay, a row changes only if its error drops).
    bool affine_refit = false;
    /// ILA-AMP (TWLA, docs/sources.md §2.5; model/ila_amp.hpp): > 0 gives every block its own
    /// int_symmetric activation width from `ila_bits`, chosen by the chain DP under
    /// Σ_i b_i ≤ round(ila_mean_bits · L) from NLL tables measured on the calibration text (the model
    /// with the recipe's rotations and FP32 weights, before any weight is quantized); each record carries
    /// its block's width (`linear_record::act_bits`) and `act_bits` is unused. 0: every block at `act_bits`.
    double ila_mean_bits = 0;
    std::vector<int> ila_bits{2, 4, 6, 8}; ///< ILA-AMP candidate widths (distinct, in 2..8; the largest is the baseline)
    double ila_beta = 0.5;                 ///< ILA-AMP pair-interaction weight β ≥ 0
    /// ILA-AMP calibration windows (of `quantize_options::calib_window` tokens) per NLL evaluation; the
    /// tables cost 1 + 3L + 9(L − 1) evaluations with the default candidates (64 for L = 6).
    int ila_windows = 4;
    /// SpecQuant (docs/specquant.md, specquant.hpp; int4 weights, no rotation): every block linear is
    /// smoothed with per-input-channel factors λ from its calibration inputs' absmax (`spec_smooth`,
    /// strength `spec_alpha`), each row of W' = W·diag(λ) is split into its lowest frequencies (kept as
    /// fp16 DFT coefficients, adaptive K_i per row by `spec_eta` and `spec_k_max`) and a residual R,
    /// and R is quantized by the recipe's int4 scheme and solver (GPTQ with the smoothed inputs'
    /// Hessian). At run time x' = x·diag(λ)⁻¹ feeds the int4 kernel on R and a dense GEMV with the
    /// synthesised low-frequency part (`specquant_linear`).
    bool specquant = false;
    bool spec_smooth = true;   ///< SpecQuant stage 1 (smoothing); false: λ = 1, nothing stored
    double spec_alpha = 0.5;   ///< SpecQuant smoothing strength α ∈ [0, 1] (`smoothquant_scales_from_absmax`)
    double spec_eta = 0.995;   ///< SpecQuant energy fraction η ∈ (0, 1] kept per row (`spectral_truncation::eta`)
    int spec_k_max = 0;        ///< SpecQuant cap on the kept frequencies per row (0: no cap)
    /// End-to-end scale tuning (EfficientQAT's E2E-QP, model/scale_tuning.hpp): after every block is
    /// quantized, this many Adam steps, each on the next `tune_windows` calibration windows, move the
    /// fp16 scales and offsets of the packed linears (codes fixed) along the gradient of the
    /// calibration loss; the last `tune_windows` windows are held out and decide whether the tuned
    /// values are kept. 0: none.
    int tune_steps = 0;
    double tune_lr = 2e-3;     ///< scale tuning step relative to each row's initial |α| (> 0)
    int tune_windows = 4;      ///< scale tuning: calibration windows per step, and held out (≥ 1)
    /// Scale tuning also moves the codes (straight-through latents, step in code units; 0: codes fixed;
    /// `scale_tuning_options::code_lr`). Same formats and bits.
    double tune_code_lr = 0.0;
    /// BiLLM weights: split the non-salient weights in two groups at a searched break point (one group
    /// bit per non-salient weight, the paper's); false: one group (`billm_options::split`).
    bool billm_split = true;
    /// Mixed precision, as llama-quantize's `--tensor-type` bumps chosen tensors: the block linears named
    /// here are quantized to grouped int4 (`int4_linear_recipe`: asymmetric int4 with an fp16 scale and
    /// offset per row and 128 columns, record format "int4_g128", under the recipe's own solver,
    /// rotation and activations) and every other linear as the recipe says. Entries joined by '/', each
    /// a slot name (wq, wk, wv, wo, w1, w2, w3: that slot in every layer and expert) or a full linear
    /// name ("layers.0.w2", "layers.1.experts.3.w1"); e.g. "wv/layers.0.w2/layers.5.w2". Empty: none.
    /// The bits of those linears count as stored (4.25 b/w plus their rotation), like every other.
    std::string int4_linears{};
    [[nodiscard]] bool needs_calibration() const {
        return solver == solver_kind::gptq || low_rank > 0 || rotation == rotation_kind::torq || ila_mean_bits > 0 ||
               specquant || tune_steps > 0;
    }
};

/// The built-in recipes (naive baselines, GPTQ, TWLA-style, BWLA-style, activation rotations, MX).
[[nodiscard]] inline std::vector<recipe> builtin_recipes() {
    using W = weight_scheme;
    using S = solver_kind;
    using R = rotation_kind;
    using A = activation_kind;
    std::vector<recipe> r;
    auto add = [&r](recipe x) { r.push_back(std::move(x)); };
    add({"fp32", "FP32 reference", W::fp32, S::rtn, R::none, A::fp32});
    add({"rtn-w4", "RTN int4 per row (naive)", W::int4, S::rtn, R::none, A::fp32});
    add({"gptq-w4", "GPTQ int4 per row", W::int4, S::gptq, R::none, A::fp32});
    for (int g : {128, 256}) {
        recipe x{"gptq-w4-g" + std::to_string(g), "GPTQ int4, fp16 scale + offset per " + std::to_string(g) +
                                                      " columns (static groups, act order)",
                 W::int4, S::gptq, R::none, A::fp32};
        x.group_size = g;
        add(x);
    }
    {
        recipe x{"gptq-w4-g128-clip", "gptq-w4-g128 with the diag(H)-weighted clip search (11 ratios 1 ... 0.5)",
                 W::int4, S::gptq, R::none, A::fp32};
        x.group_size = 128;
        x.clip_grid = 11;
        add(x);
        recipe y{"gptq-w4a8-g128", "gptq-w4-g128 with int8 activations (grouped integer kernel)", W::int4, S::gptq,
                 R::none, A::int_symmetric, 8};
        y.group_size = 128;
        add(y);
    }
    add({"absmean-w1.58", "absmean ternary per row (naive)", W::absmean_ternary, S::rtn, R::none, A::fp32});
    add({"binary-w1", "sign binary μ + α·b per row (naive)", W::sign_binary, S::rtn, R::none, A::fp32});
    add({"rtn-w4a8", "RTN int4 per row, int8 activations (integer kernel)", W::int4, S::rtn, R::none,
         A::int_symmetric, 8});
    add({"absmean-w1.58a8", "absmean ternary, int8 activations (integer kernel)", W::absmean_ternary, S::rtn,
         R::none, A::int_symmetric, 8});
    add({"mxfp4-w4a4", "MXFP4 weights and activations (naive)", W::mxfp4, S::rtn, R::none, A::mxfp4});
    add({"twla-w1.58", "Hadamard + GPTQ + E2M-ATQ (μ, α per row, stage 2 with the layer's S)", W::e2m_atq, S::gptq, R::randomized_hadamard,
         A::fp32});
    add({"twla-w1.58a8", "twla-w1.58 with int8 activations", W::e2m_atq, S::gptq, R::randomized_hadamard,
         A::int_symmetric, 8});
    add({"twla-w1.58a6", "twla-w1.58 with int6 activations", W::e2m_atq, S::gptq, R::randomized_hadamard,
         A::int_symmetric, 6});
    add({"twla-w1.58a4", "twla-w1.58 with int4 activations", W::e2m_atq, S::gptq, R::randomized_hadamard,
         A::int_symmetric, 4});
    add({"bwla-w1", "Hadamard + GPTQ + ARB binary (μ, α per row)", W::arb_binary, S::gptq, R::randomized_hadamard,
         A::fp32});
    add({"bwla-w1a6", "bwla-w1 with int6 activations", W::arb_binary, S::gptq, R::randomized_hadamard,
         A::int_symmetric, 6});
    recipe psp{"bwla-w1a6-psp", "bwla-w1a6 + PSP rank-1 correction", W::arb_binary, S::gptq,
               R::randomized_hadamard, A::int_symmetric, 6};
    psp.low_rank = 1;
    add(psp);
    add({"fp32-a4", "FP32 weights, asymmetric per-token int4 activations", W::fp32, S::rtn, R::none,
         A::int_asymmetric, 4});
    add({"fp32-a4-hadamard", "fp32-a4 with an online Hadamard rotation", W::fp32, S::rtn, R::randomized_hadamard,
         A::int_asymmetric, 4});
    add({"mxfp4-w4a4-hadamard", "mxfp4-w4a4 with an online Hadamard rotation", W::mxfp4, S::rtn,
         R::randomized_hadamard, A::mxfp4});
    // learned rotations (the papers' own): KOTMS for ternary, OKT for binary, TORQ for MXFP4 activations
    add({"twla-w1.58-kotms", "twla-w1.58 with KOTMS factors learned per linear", W::e2m_atq, S::gptq, R::kotms,
         A::fp32});
    add({"twla-w1.58a4-kotms", "twla-w1.58-kotms with int4 activations", W::e2m_atq, S::gptq, R::kotms,
         A::int_symmetric, 4});
    // TWLA W1.58A4 with ILA-AMP: per-block int2/4/6/8 activations, mean 4 bits (the paper's "4MP")
    for (const char* base : {"twla-w1.58a4", "twla-w1.58a4-kotms"}) {
        recipe mp = *std::find_if(r.begin(), r.end(), [&](const recipe& x) { return x.name == base; });
        mp.name = std::string(base) == "twla-w1.58a4" ? "twla-w1.58a4mp" : "twla-w1.58a4mp-kotms";
        mp.description = std::string(base) + " with ILA-AMP activations: int2/4/6/8 per block, mean 4 bits";
        mp.ila_mean_bits = 4.0;
        add(mp);
    }
    add({"bwla-w1-okt", "bwla-w1 with OKT factors learned per linear", W::arb_binary, S::gptq, R::okt, A::fp32});
    add({"bwla-w1a6-okt", "bwla-w1-okt with int6 activations", W::arb_binary, S::gptq, R::okt, A::int_symmetric, 6});
    recipe okt_psp{"bwla-w1a6-okt-psp", "BWLA W1A6: OKT + PSP rank-1 correction + GPTQ ARB-X binary, int6 activations",
                   W::arb_binary, S::gptq, R::okt, A::int_symmetric, 6};
    okt_psp.low_rank = 1;
    add(okt_psp);
    add({"mxfp4-w4a4-torq", "mxfp4-w4a4 with TORQ rotations learned per linear", W::mxfp4, S::rtn, R::torq,
         A::mxfp4});
    // TWLA's grouped TRA-GPTQ (salient groups, order-2 residuals), packed salient-ternary layout
    add({"twla-tra-kotms", "KOTMS + TRA-GPTQ grouped ternary (salient-ternary kernel)", W::tra_ternary, S::gptq, R::kotms,
         A::fp32});
    // BiLLM (binary, salient columns with a residual plane, split non-salient groups), packed salient-binary layout
    {
        recipe b{"billm-w1", "BiLLM: GPTQ + salient columns (order-2 residual) + split non-salient binary (salient-binary kernel)",
                 W::billm_binary, S::gptq, R::none, A::fp32};
        b.act_order = false; // as the paper runs it
        b.group_size = 128;  // blocks of 128 columns, scales per row and block
        add(b);
    }
    // NLI piecewise-linear SiLU / exp / rsqrt in the forward pass
    recipe fnli{"fp32-nli", "FP32 weights, NLI SiLU/exp/rsqrt operators", W::fp32, S::rtn, R::none, A::fp32};
    fnli.nli = true;
    add(fnli);
    recipe tnli{"twla-w1.58a8-kotms-nli", "twla-w1.58-kotms, int8 activations, NLI operators", W::e2m_atq, S::gptq,
                R::kotms, A::int_symmetric, 8};
    tnli.nli = true;
    add(tnli);
    // SpecQuant (§12): smoothing + low-frequency Fourier truncation, int4 GPTQ on the residual
    {
        recipe x{"specquant-w4", "SpecQuant: smoothing, fp16 low frequencies (eta 0.995) + GPTQ int4 per row on the residual",
                 W::int4, S::gptq, R::none, A::fp32};
        x.specquant = true;
        add(x);
        recipe y = x;
        y.name = "specquant-w4a4";
        y.description = "specquant-w4 with int4 per-token activations (the low-frequency part sees the same int4 inputs)";
        y.activation = A::int_symmetric;
        y.act_bits = 4;
        add(y);
    }
    // QuaRot's offline residual-stream rotation folded into the weights (exports to plain GGUF)
    for (const char* base : {"rtn-w4", "gptq-w4", "absmean-w1.58"}) {
        recipe q = *std::find_if(r.begin(), r.end(), [&](const recipe& x) { return x.name == base; });
        q.name += "-quarot";
        q.description = std::string(base) + " after an offline randomised-Hadamard rotation of the residual stream (QuaRot, folded)";
        q.residual_rotation = true;
        add(q);
    }
    // TWLA / BWLA under GPTQ as the papers run them: TWLA's damping 0.1 (percdamp) and each row fitted with
    // the layer's S (E2M-ATQ stage 2, the "manifold" step; ARB-X for binary), plus an affine refit of
    // (μ, α) per row for GPTQ's final codes (llama-21M-en, 16 dev windows: twla-w1.58 35.06 -> 28.44,
    // bwla-w1a6 236.4 -> 45.4; docs/results.md "E2M-ATQ with the layer's S inside GPTQ")
    for (auto& x : r) {
        if (x.solver != S::gptq || (x.weights != W::e2m_atq && x.weights != W::arb_binary)) continue;
        x.gram_stage2 = x.affine_refit = true;
        x.damp = 0.1;
    }
    // End-to-end scale tuning (EfficientQAT's E2E-QP) after the packed recipes that lose most to FP32
    for (const char* base : {"gptq-w4", "twla-w1.58a8", "twla-w1.58-kotms", "bwla-w1a6"}) {
        recipe q = *std::find_if(r.begin(), r.end(), [&](const recipe& x) { return x.name == base; });
        q.name += "-e2e";
        q.description = std::string(base) + " + end-to-end tuning of the fp16 scales and offsets (codes fixed)";
        q.tune_steps = 40;
        add(q);
    }
    // A llama-quantize-style mixture: twla-w1.58-kotms-e2e with every value projection and the first
    // layer's down projection in grouped int4 (int4_linears; llama-21M-en, 16 dev windows: 25.357 at
    // 2.02 b/w against Q2_K's 25.483 at 2.93; docs/results.md "Mixed precision")
    {
        recipe q = *std::find_if(r.begin(), r.end(), [](const recipe& x) { return x.name == "twla-w1.58-kotms-e2e"; });
        q.name = "twla-w1.58-mix";
        q.description = "twla-w1.58-kotms-e2e with wv and layers.0.w2 in grouped int4 (int4_linears)";
        q.int4_linears = "wv/layers.0.w2";
        add(q);
    }
    return r;
}

/// Names of the built-in recipes, comma separated (for messages and --help).
[[nodiscard]] inline std::string builtin_recipe_names() {
    std::string s;
    for (const auto& r : builtin_recipes()) {
        if (!s.empty()) s += ", ";
        s += r.name;
    }
    return s;
}

/// Applies "key=value" fields to a recipe (defined below, after `recipe_fields`).
inline void set_recipe_fields(recipe& r, std::string_view fields, char sep = ';');

/// The built-in recipe called `name`, or a variant of one: `name:key=value:key=value…` applies the
/// fields (keys of `recipe_fields`, ':'-separated) to the built-in recipe, and the variant's name is the
/// whole text (e.g. "twla-w1.58:gram_stage2=true:affine_refit=true"; `lowbit-quantize compare --recipes`
/// takes such names). \throws invalid_argument naming the known recipes, or the bad field.
[[nodiscard]] inline recipe find_recipe(std::string_view name) {
    const auto colon = name.find(':');
    const std::string_view base = name.substr(0, colon);
    for (auto& r : builtin_recipes())
        if (r.name == base) {
            if (colon != std::string_view::npos) {
                set_recipe_fields(r, name.substr(colon + 1), ':');
                r.name = std::string(name);
                r.description += " (" + std::string(name.substr(colon + 1)) + ")";
            }
            return r;
        }
    throw invalid_argument("lowbit: find_recipe: unknown recipe '" + std::string(base) +
                           "' (known: " + builtin_recipe_names() + ")");
}

/// The nonlinear operators recipe `r` runs: exact when `!r.nli`; otherwise NLI tables (activations.hpp
/// presets): SiLU as x / (1 + exp_pwl(−x)) and the softmax exponentials through the 16-segment 2^f table
/// (max relative error ≈ 2.4e-4), RMSNorm's 1/√x through the 32-segment mantissa table.
[[nodiscard]] inline nonlinear_ops recipe_nonlinear_ops(const recipe& r) {
    if (!r.nli) return {};
    const pwl_table& e = preset_table<exp2_fraction_function>();
    const pwl_table& q = preset_table<rsqrt_mantissa_function>();
    nonlinear_ops ops;
    ops.silu = [&e](std::span<const float> in, std::span<float> out) { silu_exp_pwl(e, in, out); };
    ops.exp = [&e](std::span<const float> in, std::span<float> out) { exp_pwl(e, in, out); };
    ops.rsqrt = [&q](std::span<const float> in, std::span<float> out) { rsqrt_pwl(q, in, out); };
    return ops;
}

/// Options of `quantize_model`.
struct quantize_options {
    int calib_window = -1;      ///< calibration window (tokens; −1: seq_len − 1)
    int calib_windows = 8;      ///< calibration windows used (at most)
    /// Progress callback, called once per quantized block linear ("layers.3.w2 ..."), plus ILA-AMP's
    /// allocation line ("ila-amp: ...") and one line per scale-tuning step ("scale tuning: ...").
    std::function<void(const std::string&)> progress;
};

/// A learned rotation as a block linear stores it: Kronecker factors C (l×l), B (r×r) of x ↦ x(Cᵀ ⊗ B)
/// (KOTMS, OKT) or a dense n×n matrix Q of x ↦ xQ (TORQ), entries rounded to fp16. `transform()`
/// re-orthonormalises each matrix by its polar factor (U·Vᵀ of its SVD, in double), so the
/// transform a layer runs is exactly orthogonal up to float rounding and identical after save/load.
struct stored_rotation {
    matrix_f left;  ///< C (l, l), or empty
    matrix_f right; ///< B (r, r), or empty
    matrix_f dense; ///< Q (n, n), or empty

    /// Width n of the rotated inputs.
    [[nodiscard]] Eigen::Index dim() const { return dense.size() ? dense.rows() : left.rows() * right.rows(); }
    /// Stored bits: 16 per entry.
    [[nodiscard]] double storage_bits() const {
        return 16.0 * static_cast<double>(left.size() + right.size() + dense.size());
    }
};

/// What a quantized block linear stores: the serialized form (`save_quantized_model`) from which
/// `build_linear` rebuilds the operator.
struct linear_record {
    /// "dense", a packed format name ("int4", "ternary2", ...), "int4_g128" / "int4_g256" (grouped int4:
    /// `scale` and `offset` hold rows·groups values, row-major, index i·groups + g), "salient_binary"
    /// (BiLLM, salient_binary.hpp: `codes` = its `bytes()`, `scale` = its fp16 table), "salient_ternary"
    /// (TRA-GPTQ, salient_ternary.hpp: `codes` = its `bytes()`, `scale` = its fp16 parameters) or an expert format
    /// (moe_experts.hpp)
    std::string format;
    Eigen::Index rows = 0;            ///< out features
    Eigen::Index cols = 0;            ///< in features
    std::vector<std::uint8_t> codes;  ///< packed bytes in the kernels' layout (packed formats)
    vector_f scale;                   ///< (rows) α, fp16-exact (packed formats); grouped int4: rows·groups
    vector_f offset;                  ///< (rows) μ, fp16-exact, or empty; grouped int4: rows·groups
    matrix_f dense;                   ///< (rows, cols) weights of the "dense" format
    double dense_bits = 32.0;         ///< bits per weight counted for the dense format (MXFP4: 4.25)
    std::optional<low_rank> correction; ///< low-rank term, fp16-exact factors
    std::optional<stored_rotation> rotation; ///< learned rotation (after the recipe's Hadamard), fp16-exact
    /// What the recipe's rotation learner did for this linear, e.g. "kotms (8, 64) learned, loss -0.04 -> -0.59"
    /// or "kotms not learned: factors (8, 512) exceed rotation_max_factor 16; Hadamard only"; empty when
    /// the recipe learns no rotation. Saved as metadata `<name>.rotation_status`; informational (the
    /// loader rebuilds from `rotation` and the recipe, never from this text).
    std::string rotation_status;
    /// ILA-AMP: the integer activation width of this linear's block (2..8), overriding the recipe's
    /// `act_bits`; 0 (default): the recipe's. Saved as metadata `<name>.act_bits`.
    int act_bits = 0;
    expert_tensors expert;            ///< own and shared tensors of an expert format (moe_experts.hpp), else empty
    /// SpecQuant (`recipe::specquant`): the smoothing factors λ `(cols)`, fp16-exact and > 0, or empty
    /// (no smoothing). The stored weights (codes and `spectrum`) are those of W' = W·diag(λ); the layer
    /// runs x' = x·diag(λ)⁻¹. Saved as F16 `<name>.smoothing`; counted at 16 bits each.
    vector_f smoothing;
    /// SpecQuant: per row the K_i lowest DFT coefficients of W' (`spectral_truncate`'s unnormalised
    /// X_0..X_{K_i−1}, real and imaginary parts fp16-exact, DC and (cols even) Nyquist imaginary 0), or
    /// empty (no low-frequency part). `rows` entries when present; the codes hold R = W' − W_FFT with
    /// W_FFT = `spectral_synthesis(spectrum, cols)`. Saved as U16 `<name>.spectrum_kept` (K_i) and F16
    /// `<name>.spectrum` (the `spectral_stored_reals` reals of each row, row after row); counted at 16
    /// bits per stored real and 16 per row for K_i.
    std::vector<Eigen::VectorXcf> spectrum;

    /// Serialized storage bits (see the file comment). \throws as the expert format's builder (inconsistent record).
    [[nodiscard]] double storage_bits() const {
        double bits = 0.0;
        if (const auto* ef = detail::find_expert_format(format)) {
            bits = ef->storage_bits({rows, cols, codes, scale, offset, expert});
        } else if (format == "dense") {
            bits = dense_bits * static_cast<double>(rows) * static_cast<double>(cols);
        } else if (format == "salient_binary" || format == "salient_ternary") { // serialized bytes and fp16 table / parameters
            bits = 8.0 * static_cast<double>(codes.size()) + 16.0 * static_cast<double>(scale.size());
        } else {
            const auto nb = [](int bb, int bw) { return 8.0 * bb / bw; };
            const double code_bits = format == "int4" ? nb(pack_format<int4>::block_bytes, pack_format<int4>::block_weights)
                                   : format == "ternary2" ? nb(pack_format<ternary2>::block_bytes, pack_format<ternary2>::block_weights)
                                   : format == "ternary_base3" ? nb(pack_format<ternary_base3>::block_bytes, pack_format<ternary_base3>::block_weights)
                                   : nb(pack_format<binary1>::block_bytes, pack_format<binary1>::block_weights);
            // grouped int4: the stored code bytes themselves (row padding to 256 included)
            bits = (format == "int4_g128" || format == "int4_g256" ? 8.0 * static_cast<double>(codes.size())
                                                                   : code_bits * static_cast<double>(rows) * static_cast<double>(cols)) +
                   16.0 * static_cast<double>(scale.size() + offset.size());
        }
        if (correction) bits += 16.0 * static_cast<double>(correction->a.size() + correction->b.size());
        if (rotation) bits += rotation->storage_bits();
        bits += 16.0 * static_cast<double>(smoothing.size());
        for (const auto& c : spectrum)
            bits += 16.0 * static_cast<double>(1 + spectral_stored_reals(std::min<Eigen::Index>(c.size(), cols / 2 + 1), cols));
        return bits;
    }
};

namespace detail {

inline void round_fp16(vector_f& v) {
    for (Eigen::Index i = 0; i < v.size(); ++i) v(i) = round_fp16(v(i));
}


/// Codes t_ij = round((q_ij − μ_i)/α_i) clamped to [lo, hi] (α_i = 0 gives 0; binary: sign).
inline matrix_i8 affine_codes(const matrix_f& q, const vector_f& mu, const vector_f& alpha, int lo, int hi,
                              bool binary) {
    matrix_i8 t(q.rows(), q.cols());
    for (Eigen::Index i = 0; i < q.rows(); ++i)
        for (Eigen::Index j = 0; j < q.cols(); ++j) {
            const double d = static_cast<double>(q(i, j)) - (mu.size() ? static_cast<double>(mu(i)) : 0.0);
            if (binary) {
                t(i, j) = d >= 0.0 ? 1 : -1;
            } else {
                const double a = static_cast<double>(alpha(i));
                const double v = a > 0.0 ? std::nearbyint(d / a) : 0.0;
                t(i, j) = static_cast<std::int8_t>(std::clamp(v, static_cast<double>(lo), static_cast<double>(hi)));
            }
        }
    return t;
}

/// A block linear with its serialized size (see the file comment), wrapping a quantized_linear.
template <class Op>
class counted_linear {
public:
    counted_linear(Op op, double bits) : op_(std::move(op)), bits_(bits) {}
    [[nodiscard]] Eigen::Index in_features() const { return op_.in_features(); }
    [[nodiscard]] Eigen::Index out_features() const { return op_.out_features(); }
    void apply(const matrix_f& x, matrix_f& y) const { op_.apply(x, y); }
    [[nodiscard]] double storage_bits() const { return bits_; }
    [[nodiscard]] const Op& op() const { return op_; }

private:
    Op op_;
    double bits_;
};

/// MXFP4 quantize-dequantize of activations (last block shorter when 32 does not divide the width).
struct mxfp4_fake_quant {
    [[nodiscard]] matrix_f operator()(const matrix_f& x) const {
        return mx_fake_quantize<mxfp4>(x, tail_policy::smaller_last);
    }
};

/// The polar factor U·Vᵀ of a square matrix (its nearest orthogonal matrix), computed in double.
template <class = void>
matrix_f polar_orthonormal(const matrix_f& m) {
    const Eigen::JacobiSVD<matrix_d> svd(m.cast<double>(), Eigen::ComputeFullU | Eigen::ComputeFullV);
    return (svd.matrixU() * svd.matrixV().transpose()).cast<float>();
}

/// m with every entry rounded to fp16.
inline matrix_f fp16_rounded(matrix_f m) {
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = round_fp16(m.data()[i]);
    return m;
}

} // namespace detail

/// The online rotation of a recipe's block linear: the recipe's randomised Hadamard (if any), then the
/// layer's learned rotation (if any): x ↦ x·H·K. A `RowTransform`.
struct block_rotation {
    std::optional<hadamard_transform> hadamard; ///< the recipe's Hadamard of the input width
    std::optional<kronecker_rotation> kronecker; ///< learned Kronecker factors (orthonormalised)
    std::optional<dense_rotation> dense;         ///< learned dense rotation (orthonormalised)

    /// The transform of a stored rotation (factors re-orthonormalised, see `stored_rotation`).
    /// \throws shape_error (non-square factors).
    template <class = void>
    [[nodiscard]] static block_rotation from(std::optional<hadamard_transform> h, const std::optional<stored_rotation>& s) {
        block_rotation b;
        b.hadamard = std::move(h);
        if (s && s->dense.size()) {
            detail::require_square(s->dense.rows(), s->dense.cols(), "block_rotation", "dense");
            b.dense = dense_rotation{detail::polar_orthonormal(s->dense)};
        } else if (s) {
            detail::require_square(s->left.rows(), s->left.cols(), "block_rotation", "left");
            detail::require_square(s->right.rows(), s->right.cols(), "block_rotation", "right");
            b.kronecker = kronecker_rotation{detail::polar_orthonormal(s->left), detail::polar_orthonormal(s->right)};
        }
        return b;
    }
    /// True if the transform is the identity (nothing to apply).
    [[nodiscard]] bool empty() const { return !hadamard && !kronecker && !dense; }
    /// Width of the rotated rows (0 when empty).
    [[nodiscard]] Eigen::Index dim() const {
        return hadamard ? hadamard->dim() : kronecker ? kronecker->dim() : dense ? dense->dim() : 0;
    }
    /// x ↦ x·H·K on every row. \throws shape_error (width mismatch).
    template <class = void> // compiled only where called (docs/compile_time.md)
    void apply_rows(Eigen::Ref<matrix_f> m) const {
        if (hadamard) hadamard->apply_rows(m);
        if (kronecker) kronecker->apply_rows(m);
        if (dense) dense->apply_rows(m);
    }
};

/// A SpecQuant block linear (`recipe::specquant`): y = A(x')·(R̂ + W_FFT)ᵀ with x' = x·diag(λ)⁻¹, where
/// `inner` runs the quantized residual R̂ on x' (its own kernel and activation policy) and the
/// low-frequency part W_FFT is added by float GEMMs of the same activations A(x'): quantize-dequantized
/// at `act_bits` on the integer kernel's grid (`quantize_activations`), or x' itself when `act_bits` = 0.
/// Since x'·W'ᵀ = x·Wᵀ for W' = W·diag(λ), the layer approximates x·Wᵀ with the error of R̂ and of the
/// activations only. W_FFT is held either dense (`low_a` = W_FFT `[out x in]`, `low_b` empty) or
/// factored as W_FFT = low_a·low_b with `low_a` `[out x r]` (each row's scaled real and imaginary DFT
/// coefficients) and `low_b` `[r x in]` (the cosines and sines of the kept frequencies):
/// y += (A(x')·low_bᵀ)·low_aᵀ, r·(in + out) MACs per token instead of in·out — one real DFT of the
/// kept frequencies per token and 2K_i real MACs per row (`specquant_low_part` picks the cheaper form).
/// Cost per token: the inner kernel, in for the smoothing, and the low part. `storage_bits()` is given by
/// the caller (the record's count: codes, scales, λ and the stored coefficients — not the run-time form
/// of W_FFT, which is rebuilt from the coefficients).
class specquant_linear {
public:
    /// \param inner     the residual's operator `[out x in]`, fed x'.
    /// \param smoothing λ `(in)`, finite and > 0, or empty (x' = x).
    /// \param low_a     W_FFT `[out x in]` (with `low_b` empty), or its left factor `[out x r]`, or empty (no low part).
    /// \param low_b     empty, or the right factor `[r x in]`.
    /// \param act_bits  0 (float activations into the low part) or 2..8.
    /// \param bits      storage bits reported by `storage_bits()`.
    /// \throws invalid_argument (null inner, act_bits outside {0} ∪ 2..8, λ not finite and > 0),
    ///         shape_error (λ or the low part's shapes disagree with inner).
    specquant_linear(std::shared_ptr<const linear_operator> inner, vector_f smoothing, matrix_f low_a, matrix_f low_b,
                     int act_bits, double bits)
        : inner_(std::move(inner)), lambda_(std::move(smoothing)), a_(std::move(low_a)), b_(std::move(low_b)),
          act_bits_(act_bits), bits_(bits) {
        constexpr const char* where = "specquant_linear";
        detail::require(inner_ != nullptr, where, "argument 'inner' is null");
        detail::require(act_bits_ == 0 || (act_bits_ >= 2 && act_bits_ <= 8), where, "act_bits must be 0 or lie in 2..8");
        if (lambda_.size()) {
            detail::require_dim(lambda_.size(), inner_->in_features(), where, "length of the smoothing factors");
            detail::require(lambda_.allFinite() && (lambda_.array() > 0.0f).all(), where,
                            "smoothing factors must be finite and > 0");
        }
        if (b_.size()) {
            detail::require_dim(a_.rows(), inner_->out_features(), where, "rows of the low part's left factor");
            detail::require_dim(b_.cols(), inner_->in_features(), where, "columns of the low part's right factor");
            detail::require_dim(b_.rows(), a_.cols(), where, "rank of the low part's factors");
        } else if (a_.size()) {
            detail::require_dim(a_.rows(), inner_->out_features(), where, "rows of the low-frequency part");
            detail::require_dim(a_.cols(), inner_->in_features(), where, "columns of the low-frequency part");
        }
    }
    [[nodiscard]] Eigen::Index in_features() const { return inner_->in_features(); }   ///< in
    [[nodiscard]] Eigen::Index out_features() const { return inner_->out_features(); } ///< out
    /// y = inner(x') + A(x')·W_FFTᵀ (see the class comment); x is `[tokens x in]`.
    /// \throws as `inner` (NaN/Inf activations under integer kernels).
    template <class = void> // compiled only where called (docs/compile_time.md)
    void apply(const matrix_f& x, matrix_f& y) const {
        const matrix_f xs = lambda_.size() ? smooth_activations(x, lambda_) : x;
        inner_->apply(xs, y);
        if (!a_.size()) return;
        const matrix_f xq = act_bits_ > 0 ? detail::int_fake_quantize(xs, act_bits_) : xs;
        if (b_.size()) y.noalias() += (xq * b_.transpose()) * a_.transpose();
        else y.noalias() += xq * a_.transpose();
    }
    [[nodiscard]] double storage_bits() const { return bits_; } ///< as given to the constructor
    [[nodiscard]] const vector_f& smoothing() const { return lambda_; } ///< λ (or empty)
    [[nodiscard]] const matrix_f& low_a() const { return a_; }          ///< W_FFT or its left factor (or empty)
    [[nodiscard]] const matrix_f& low_b() const { return b_; }          ///< right factor (or empty: `low_a` is dense)
    [[nodiscard]] const linear_operator& inner() const { return *inner_; } ///< the residual's operator

private:
    std::shared_ptr<const linear_operator> inner_;
    vector_f lambda_;
    matrix_f a_, b_;
    int act_bits_;
    double bits_;
};

/// The run-time form of a SpecQuant low-frequency part from its stored coefficients (`linear_record::spectrum`,
/// `cols` = n): `first` = W_FFT = `spectral_synthesis(spectrum, n)` dense and `second` empty when that is
/// cheaper, else the factors W_FFT = first·second with r = 2·K_max − 1 (K_max = max_i K_i): row 0 of
/// `second` is 1, rows 2f − 1 and 2f (f = 1..K_max−1) are cos(2πfj/n) and sin(2πfj/n) (angles from the exact
/// residue f·j mod n, in double); `first(i, ·)` holds X_0/n, m_f·Re X_f/n and −m_f·Im X_f/n (m_f = 1 for the
/// Nyquist frequency, 2 otherwise; zeros beyond K_i). The factored form is used when r·(out + n) < out·n.
/// Both are empty when every K_i is 0. O(out·n·log n) dense, O((out + n)·r) factored.
/// \throws as `spectral_synthesis`.
[[nodiscard]] inline std::pair<matrix_f, matrix_f> specquant_low_part(const std::vector<Eigen::VectorXcf>& spectrum,
                                                                      Eigen::Index n) {
    Eigen::Index k_max = 0;
    for (const auto& c : spectrum) k_max = std::max<Eigen::Index>(k_max, c.size());
    if (k_max == 0) return {};
    const Eigen::Index out = static_cast<Eigen::Index>(spectrum.size()), r = 2 * k_max - 1;
    if (r * (out + n) >= out * n) return {spectral_synthesis(spectrum, n), matrix_f()};
    detail::require(k_max <= n / 2 + 1, "specquant_low_part", "a row keeps more than n/2 + 1 frequencies");
    matrix_f b(r, n), a = matrix_f::Zero(out, r);
    const double two_pi = 6.283185307179586476925286766559, dn = static_cast<double>(n);
    b.row(0).setOnes();
    for (Eigen::Index f = 1; f < k_max; ++f)
        for (Eigen::Index j = 0; j < n; ++j) {
            const double t = two_pi * static_cast<double>((f * j) % n) / dn;
            b(2 * f - 1, j) = static_cast<float>(std::cos(t));
            b(2 * f, j) = static_cast<float>(std::sin(t));
        }
    for (Eigen::Index i = 0; i < out; ++i) {
        const auto& c = spectrum[static_cast<std::size_t>(i)];
        for (Eigen::Index f = 0; f < c.size(); ++f) {
            detail::require<numeric_error>(std::isfinite(c(f).real()) && std::isfinite(c(f).imag()), "specquant_low_part",
                                           "a coefficient is NaN or Inf");
            if (f == 0) {
                a(i, 0) = static_cast<float>(static_cast<double>(c(0).real()) / dn);
                continue;
            }
            const double mf = (n % 2 == 0 && f == n / 2) ? 1.0 : 2.0;
            a(i, 2 * f - 1) = static_cast<float>(mf * static_cast<double>(c(f).real()) / dn);
            a(i, 2 * f) = (n % 2 == 0 && f == n / 2) ? 0.0f : static_cast<float>(-mf * static_cast<double>(c(f).imag()) / dn);
        }
    }
    return {std::move(a), std::move(b)};
}

namespace detail {

/// Builds the linear operator for weights `w` (already rotated), activation `a`, optional rotation.
template <class Weights, class Act>
inline std::shared_ptr<const linear_operator> make_block_linear(Weights w, Act a, const block_rotation& rot,
                                                                std::optional<low_rank> lr, double bits) {
    if (!rot.empty()) {
        quantized_linear<Weights, Act, block_rotation> op(std::move(w), std::move(a), rot, std::move(lr));
        return make_linear(counted_linear(std::move(op), bits));
    }
    quantized_linear<Weights, Act> op(std::move(w), std::move(a), no_rotation{}, std::move(lr));
    return make_linear(counted_linear(std::move(op), bits));
}

/// Dispatches the activation policy of recipe `r` for weights `w`.
template <class Weights>
inline std::shared_ptr<const linear_operator> with_activation(const recipe& r, Weights w, const block_rotation& rot,
                                                              std::optional<low_rank> lr, double bits) {
    switch (r.activation) {
    case activation_kind::fp32:
        return make_block_linear(std::move(w), act_fp32{}, rot, std::move(lr), bits);
    case activation_kind::int_symmetric:
        return make_block_linear(std::move(w), act_int{r.act_bits}, rot, std::move(lr), bits);
    case activation_kind::int_asymmetric:
    case activation_kind::mxfp4:
        if constexpr (std::is_same_v<Weights, dense_weights>) {
            if (r.activation == activation_kind::mxfp4)
                return make_block_linear(std::move(w), act_fake<mxfp4_fake_quant>{}, rot, std::move(lr), bits);
            per_token_fake_quant f;
            f.quantizer = per_token_quantizer{r.act_bits, int_mode::asymmetric, r.act_clip};
            return make_block_linear(std::move(w), act_fake<per_token_fake_quant>{f}, rot, std::move(lr), bits);
        } else {
            throw invalid_argument("lowbit: recipe '" + r.name +
                                   "': fake-quantized activations need dense (FP32 or MXFP4) weights");
        }
    }
    throw invalid_argument("lowbit: recipe '" + r.name + "': unknown activation policy");
}

template <class F>
inline std::shared_ptr<const linear_operator> packed_from_record(const recipe& r, const linear_record& rec,
                                                                 const block_rotation& rot) {
    typename packed_matrix<F>::buffer bytes(rec.codes.begin(), rec.codes.end());
    packed_matrix<F> pw(rec.rows, rec.cols, std::move(bytes), rec.scale, rec.offset);
    return with_activation(r, std::move(pw), rot, rec.correction, rec.storage_bits());
}

/// The grouped int4 matrix of a record "int4_g<G>" (codes, rows·groups scales and offsets, row-major).
/// \throws shape_error / numeric_error / invalid_argument (inconsistent record).
inline grouped_int4_matrix grouped_of_record(const linear_record& rec) {
    const Eigen::Index gc = rec.format == "int4_g256" ? 256 : 128;
    const Eigen::Index ng = (rec.cols + gc - 1) / gc;
    require_dim(rec.scale.size(), rec.rows * ng, "build_linear", "grouped int4 scale count");
    require_dim(rec.offset.size(), rec.rows * ng, "build_linear", "grouped int4 offset count");
    packed_matrix<int4>::buffer bytes(rec.codes.begin(), rec.codes.end());
    packed_matrix<int4> codes(rec.rows, rec.cols, std::move(bytes), vector_f::Ones(rec.rows));
    const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> al(rec.scale.data(), rec.rows, ng),
        mu(rec.offset.data(), rec.rows, ng);
    return grouped_int4_matrix(std::move(codes), gc, matrix_f(al), matrix_f(mu));
}

inline std::shared_ptr<const linear_operator> grouped_from_record(const recipe& r, const linear_record& rec,
                                                                  const block_rotation& rot) {
    return with_activation(r, grouped_of_record(rec), rot, rec.correction, rec.storage_bits());
}

/// The record of a grouped int4 matrix (format "int4_g<G>").
inline linear_record grouped_record(const grouped_int4_matrix& w) {
    linear_record rec;
    rec.format = "int4_g" + std::to_string(w.group_cols());
    rec.rows = w.rows();
    rec.cols = w.cols();
    rec.codes.assign(w.codes().bytes().begin(), w.codes().bytes().end());
    const Eigen::Index ng = w.groups();
    rec.scale.resize(w.rows() * ng);
    rec.offset.resize(w.rows() * ng);
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index g = 0; g < ng; ++g) {
            rec.scale(i * ng + g) = w.scale()(i, g);
            rec.offset(i * ng + g) = w.offset()(i, g);
        }
    return rec;
}

} // namespace detail

/// The operator recipe `r` runs for a stored block linear `rec`: `hadamard` (the recipe's rotation of
/// the input width, `recipe_rotation`) followed by the record's learned rotation, if any.
/// Used by `quantize_model` and by `load_quantized_model`, so a saved model rebuilds identically.
/// \throws invalid_argument (unknown format, activation policy the weights cannot take),
///         shape_error / numeric_error (inconsistent record).
template <class = void>
[[nodiscard]] std::shared_ptr<const linear_operator> build_linear(const recipe& r, const linear_record& rec,
                                                                  const std::optional<hadamard_transform>& hadamard) {
    if (rec.rotation)
        detail::require_dim(rec.rotation->dim(), rec.cols, "build_linear", "width of the learned rotation");
    if (rec.act_bits != 0) { // ILA-AMP: this block's own activation width
        detail::require(r.activation == activation_kind::int_symmetric, "build_linear",
                        "a per-layer activation width (act_bits " + std::to_string(rec.act_bits) +
                            ") needs int_symmetric activations");
        detail::require(rec.act_bits >= 2 && rec.act_bits <= 8, "build_linear",
                        "per-layer act_bits must lie in 2..8, got " + std::to_string(rec.act_bits));
        recipe rb = r;
        rb.act_bits = rec.act_bits;
        linear_record plain = rec; // the record with the width moved into the recipe
        plain.act_bits = 0;
        return build_linear(rb, plain, hadamard);
    }
    if (rec.smoothing.size() || !rec.spectrum.empty()) { // SpecQuant: the residual's operator inside specquant_linear
        constexpr const char* where = "build_linear";
        detail::require(r.specquant, where, "a record with smoothing factors or a spectrum needs a specquant recipe");
        detail::require(!hadamard && !rec.rotation, where, "SpecQuant records run without rotation");
        std::pair<matrix_f, matrix_f> low;
        if (!rec.spectrum.empty()) {
            detail::require_dim(static_cast<Eigen::Index>(rec.spectrum.size()), rec.rows, where, "rows of the spectrum");
            low = specquant_low_part(rec.spectrum, rec.cols);
        }
        linear_record plain = rec;
        plain.smoothing.resize(0);
        plain.spectrum.clear();
        const int bits = r.activation == activation_kind::int_symmetric ? r.act_bits : 0;
        return make_linear(specquant_linear(build_linear(r, plain, hadamard), rec.smoothing, std::move(low.first),
                                            std::move(low.second), bits, rec.storage_bits()));
    }
    const block_rotation rot = block_rotation::from(hadamard, rec.rotation);
    if (rec.format == "dense") return detail::with_activation(r, dense_weights{rec.dense}, rot, rec.correction, rec.storage_bits());
    if (rec.format == pack_format<int4>::name) return detail::packed_from_record<int4>(r, rec, rot);
    if (rec.format == "int4_g128" || rec.format == "int4_g256") return detail::grouped_from_record(r, rec, rot);
    if (rec.format == pack_format<ternary2>::name) return detail::packed_from_record<ternary2>(r, rec, rot);
    if (rec.format == pack_format<ternary_base3>::name) return detail::packed_from_record<ternary_base3>(r, rec, rot);
    if (rec.format == pack_format<binary1>::name) return detail::packed_from_record<binary1>(r, rec, rot);
    if (rec.format == "salient_binary")
        return detail::with_activation(r, salient_binary_matrix::from_bytes(rec.rows, rec.cols, rec.codes, rec.scale), rot,
                                       rec.correction, rec.storage_bits());
    if (rec.format == "salient_ternary")
        return detail::with_activation(r, salient_ternary_matrix::from_bytes(rec.rows, rec.cols, rec.codes, rec.scale), rot,
                                       rec.correction, rec.storage_bits());
    if (const auto* ef = detail::find_expert_format(rec.format))
        return detail::build_expert_linear(*ef, {rec.rows, rec.cols, rec.codes, rec.scale, rec.offset, rec.expert},
                                           r.activation == activation_kind::fp32 && rot.empty() && !rec.correction);
    throw invalid_argument("lowbit: build_linear: unknown weight format '" + rec.format + "'");
}

/// The recipe a linear named in `r.int4_linears` is quantized and run with: `r` with grouped int4
/// weights (asymmetric, fp16 scale and offset per row and 128 columns; GPTQ with static groups and the
/// diag(H)-weighted clip search over 11 ratios when `r` runs GPTQ, damping 0.01 as `gptq-w4-g128-clip`)
/// and no PSP term; rotation, activations, ILA-AMP and scale tuning as `r` says. O(1).
[[nodiscard]] inline recipe int4_linear_recipe(const recipe& r) {
    recipe x = r;
    x.weights = weight_scheme::int4;
    x.group_size = 128;
    x.clip_grid = 11;
    x.damp = 0.01;
    x.low_rank = 0;
    x.affine_refit = false;
    x.gram_stage2 = false;
    x.specquant = false;
    x.int4_linears.clear();
    return x;
}

namespace detail {
/// The entries of a '/'-joined list (`recipe::int4_linears`); "" gives none, "a/" gives "a" and "".
inline std::vector<std::string_view> slash_entries(std::string_view list) {
    std::vector<std::string_view> out;
    while (!list.empty()) {
        const std::size_t end = std::min(list.find('/'), list.size());
        out.push_back(list.substr(0, end));
        if (end == list.size()) break;
        list.remove_prefix(end + 1);
        if (list.empty()) out.emplace_back(); // a trailing '/': an empty last entry
    }
    return out;
}
} // namespace detail

/// True when the block linear `name` ("layers.L.slot" or "layers.L.experts.E.slot") is listed in
/// `r.int4_linears` (by its slot name or its full name). O(length of the list).
[[nodiscard]] inline bool is_int4_linear(const recipe& r, std::string_view name) {
    const std::string_view slot = name.substr(name.rfind('.') == std::string_view::npos ? 0 : name.rfind('.') + 1);
    for (const std::string_view e : detail::slash_entries(r.int4_linears))
        if (e == name || e == slot) return true;
    return false;
}

namespace detail {

/// The recipe of block linear `name` under `r`: `int4_linear_recipe(r)` if `r.int4_linears` lists it, else `r`.
[[nodiscard]] inline recipe recipe_for_linear(const recipe& r, std::string_view name) {
    return is_int4_linear(r, name) ? int4_linear_recipe(r) : r;
}

inline void check_recipe(const recipe& r) {
    const char* where = "quantize_model";
    require(r.act_bits >= 2 && r.act_bits <= 8, where, "recipe act_bits must lie in 2..8");
    require(std::isfinite(r.ila_mean_bits) && r.ila_mean_bits >= 0, where,
            "recipe ila_mean_bits must be finite and >= 0 (0: no ILA-AMP)");
    require(r.ila_windows >= 1, where, "recipe ila_windows must be >= 1");
    {
        const std::vector<int> c = ila_candidates(r.ila_bits, where);
        require(std::isfinite(r.ila_beta) && r.ila_beta >= 0, where, "recipe ila_beta must be finite and >= 0");
        if (r.ila_mean_bits > 0) {
            check_ila_mean_beta(c, r.ila_mean_bits, r.ila_beta, where);
            require(r.activation == activation_kind::int_symmetric, where,
                    "ILA-AMP (ila_mean_bits > 0) allocates integer-kernel widths: it needs int_symmetric activations");
            require(r.rotation != rotation_kind::torq, where,
                    "ILA-AMP measures its tables before the weights are quantized; TORQ learns from calibration inputs then");
        }
    }
    require(r.act_clip > 0.0f && r.act_clip <= 1.0f, where, "recipe act_clip must lie in (0, 1]");
    require(r.low_rank >= 0, where, "recipe low_rank must be >= 0");
    require(r.low_rank == 0 || r.weights == weight_scheme::sign_binary || r.weights == weight_scheme::arb_binary,
            where, "PSP low-rank correction applies to binary weights only");
    require(r.psp_iterations >= 1, where, "recipe psp_iterations must be >= 1");
    require(r.group_size == 0 || ((r.group_size == 128 || r.group_size == 256) && r.weights == weight_scheme::int4) ||
                (r.group_size > 0 && r.weights == weight_scheme::billm_binary),
            where, "recipe group_size must be 0, or 128 / 256 with int4 weights, or > 0 with billm_binary weights");
    require(r.clip_grid >= 0, where, "recipe clip_grid must be >= 0");
    for (const std::string_view e : slash_entries(r.int4_linears)) {
        bool ok = !e.empty() && e.front() != '.' && e.back() != '.';
        for (const char c : e) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_');
        require(ok, where,
                "recipe int4_linears: entry '" + std::string(e) +
                    "' is not a slot name (wq, wk, wv, wo, w1, w2, w3) or a linear name (layers.L.slot); entries are joined by '/'");
    }
    require(r.int4_linears.empty() || !r.specquant, where, "recipe int4_linears does not combine with SpecQuant");
    require(r.rotation_max_factor >= 0, where, "recipe rotation_max_factor must be >= 0 (0: no cap)");
    require(std::isfinite(r.rotation_max_bits) && r.rotation_max_bits >= 0, where,
            "recipe rotation_max_bits must be finite and >= 0 (0: no bound)");
    if (r.specquant) {
        require(r.weights == weight_scheme::int4, where, "SpecQuant (specquant=true) quantizes its residual to int4: weights=int4");
        require(r.rotation == rotation_kind::none, where, "SpecQuant (specquant=true) runs without an online rotation");
        require(r.activation == activation_kind::fp32 || r.activation == activation_kind::int_symmetric, where,
                "SpecQuant (specquant=true) takes fp32 or int_symmetric activations");
        require(r.ila_mean_bits == 0, where, "SpecQuant (specquant=true) does not combine with ILA-AMP");
    }
    require(std::isfinite(r.spec_alpha) && r.spec_alpha >= 0 && r.spec_alpha <= 1, where,
            "recipe spec_alpha must lie in [0, 1]");
    require(r.spec_eta > 0 && r.spec_eta <= 1, where, "recipe spec_eta must lie in (0, 1]");
    require(r.spec_k_max >= 0, where, "recipe spec_k_max must be >= 0 (0: no cap)");
    require(r.tune_steps >= 0, where, "recipe tune_steps must be >= 0 (0: no scale tuning)");
    require(std::isfinite(r.tune_lr) && r.tune_lr > 0, where, "recipe tune_lr must be finite and > 0");
    require(r.tune_windows >= 1, where, "recipe tune_windows must be >= 1");
    require(std::isfinite(r.tune_code_lr) && r.tune_code_lr >= 0, where, "recipe tune_code_lr must be finite and >= 0");
    const bool packed = r.weights != weight_scheme::fp32 && r.weights != weight_scheme::mxfp4 &&
                        r.weights != weight_scheme::billm_binary;
    require(!(packed && (r.activation == activation_kind::int_asymmetric || r.activation == activation_kind::mxfp4)),
            where, "packed weights run the integer kernels: use fp32 or int_symmetric activations");
}

template <class F>
inline linear_record packed_record(const packed_matrix<F>& pw, std::optional<low_rank> lr = std::nullopt) {
    linear_record rec;
    rec.format = pack_format<F>::name;
    rec.rows = pw.rows();
    rec.cols = pw.cols();
    rec.codes.assign(pw.bytes().begin(), pw.bytes().end());
    rec.scale = pw.scale();
    rec.offset = pw.offset();
    rec.correction = std::move(lr);
    return rec;
}

/// `w` rounded column by column with a column-wise quantizer's `round_column` (round to nearest,
/// no error feedback): the `[rows x cols]` dequantized weight. O(rows · cols).
template <class Quantizer, class Params>
matrix_f round_columns(const Quantizer& quantizer, const Params& params, const matrix_f& w) {
    matrix_f q(w.rows(), w.cols());
    vector_f col(w.rows()), out(w.rows());
    for (Eigen::Index j = 0; j < w.cols(); ++j) {
        col = w.col(j);
        quantizer.round_column(params, col, out);
        q.col(j) = out;
    }
    return q;
}

/// `recipe::affine_refit`: (μ, α) per row for the codes GPTQ chose, minimising e S eᵀ with S = H/2.
template <class = void>
void refit_after_gptq(const matrix_f& w, const matrix_i8& t, const matrix_d& h, vector_f& mu, vector_f& alpha) {
    const matrix_d s = 0.5 * h;
    refit_affine_rows(w, t, s, mu, alpha, "quantize_model");
}

/// Grouped int4 (recipe::group_size = G ∈ {128, 256}): asymmetric rtn_quantizer{4} per row and per G
/// contiguous columns; GPTQ with static groups (act order as the recipe says; with clip_grid > 1 the
/// diag(H)-weighted clip search, clip_min 0.5), packed by `pack_gptq_grouped_int4` (the solver's own
/// grid indices); RTN fits and rounds each group on its own (clip search unweighted). Record format
/// "int4_g<G>": int4 codes t = c − 8, fp16 α = s, μ = s·(8 − z) per row and group.
template <class = void>
linear_record int4_grouped_record(const recipe& r, const matrix_f& w, const matrix_d* h, gptq_options gopt) {
    const Eigen::Index gs = r.group_size;
    require(gs == 128 || gs == 256, "quantize_model", "int4 group_size must be 0 (per row), 128 or 256");
    rtn_quantizer rq{4, int_mode::asymmetric};
    if (r.clip_grid > 1) {
        rq.clip_grid = r.clip_grid;
        rq.clip_min = 0.5f;
    }
    const per_group gran{gs, tail_policy::smaller_last};
    if (r.solver == solver_kind::gptq) {
        gopt.static_groups = true;
        gopt.hessian_weighted_fit = r.clip_grid > 1;
        return grouped_record(pack_gptq_grouped_int4(gptq_quantize(w, *h, rq, gran, gopt), gs));
    }
    const int_tensor t = quantize_rtn(w, rq, gran);
    const Eigen::Index ng = t.scale.cols();
    matrix_i8 codes(w.rows(), w.cols());
    matrix_f alpha(w.rows(), ng), mu(w.rows(), ng);
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        for (Eigen::Index g = 0; g < ng; ++g) {
            alpha(i, g) = static_cast<float>(Eigen::half(t.scale(i, g)));
            mu(i, g) = static_cast<float>(Eigen::half(t.scale(i, g) * (8.0f - t.zero(i, g))));
        }
        for (Eigen::Index j = 0; j < w.cols(); ++j) codes(i, j) = static_cast<std::int8_t>(static_cast<int>(t.codes(i, j)) - 8);
    }
    return grouped_record(pack_grouped_int4(codes, gs, alpha, mu));
}

/// Quantizes one block linear (W already rotated; `h` the rotated Hessian or null) to its record.
template <class = void>
linear_record quantize_linear(const recipe& r, const matrix_f& w, const matrix_d* h) {
    const bool gptq = r.solver == solver_kind::gptq;
    gptq_options gopt;
    gopt.damp = r.damp;
    gopt.act_order = r.act_order;
    switch (r.weights) {
    case weight_scheme::fp32:
    case weight_scheme::mxfp4: {
        linear_record rec;
        rec.format = "dense";
        rec.rows = w.rows();
        rec.cols = w.cols();
        if (r.weights == weight_scheme::fp32) {
            rec.dense = w;
        } else {
            rec.dense = mx_fake_quantize<mxfp4>(w, tail_policy::smaller_last);
            rec.dense_bits = 4.0 + 8.0 * static_cast<double>((w.cols() + 31) / 32) / static_cast<double>(w.cols());
        }
        return rec;
    }
    case weight_scheme::tra_ternary: {
        // TWLA's grouped ternary GPTQ (§2.4): packed in its salient-ternary layout (salient_ternary.hpp),
        // run by its kernels; bits counted from the stored bytes and parameters.
        require(gptq, "quantize_model", "tra_ternary needs the GPTQ solver (calibration Hessian)");
        tra_gptq_options to;
        to.keep_codes = true;
        const salient_ternary_matrix packed = pack_tra(tra_gptq_quantize(w, *h, to));
        linear_record rec;
        rec.format = "salient_ternary";
        rec.rows = w.rows();
        rec.cols = w.cols();
        rec.codes = packed.bytes();
        rec.scale = packed.params();
        return rec;
    }
    case weight_scheme::billm_binary: {
        // BiLLM (billm.hpp): packed in its salient-binary layout (salient_binary.hpp), run by its kernels;
        // bits counted from the stored bytes and table.
        require(gptq, "quantize_model", "billm_binary needs the GPTQ solver (calibration Hessian)");
        billm_options bo;
        bo.keep_codes = true;
        bo.gptq.damp = r.damp;
        bo.gptq.act_order = r.act_order;
        bo.gram_fit = r.gram_stage2;
        bo.split = r.billm_split;
        bo.gptq.block_size = r.group_size > 0 ? r.group_size : w.cols(); // 0: one block, scales per row
        const salient_binary_matrix packed = pack_billm(billm_quantize(w, *h, bo));
        linear_record rec;
        rec.format = "salient_binary";
        rec.rows = w.rows();
        rec.cols = w.cols();
        rec.codes = packed.bytes();
        rec.scale = packed.table();
        return rec;
    }
    case weight_scheme::int4: {
        if (r.group_size > 0) return int4_grouped_record(r, w, h, gopt);
        const rtn_quantizer rq{4, int_mode::symmetric};
        matrix_f q;
        vector_f s, z;
        if (gptq) {
            auto res = gptq_quantize(w, *h, rq, per_row{}, gopt);
            q = std::move(res.weights);
            s = res.params.front().scale;
            z = res.params.front().zero;
        } else {
            const auto p = rq.fit(w);
            q = round_columns(rq, p, w);
            s = p.scale;
            z = p.zero;
        }
        // value s·(c − z), c ∈ [0, 15] → t = c − 8 ∈ [−8, 7], value α·t + μ with α = s, μ = s·(8 − z)
        vector_f mu = s.array() * (8.0f - z.array());
        const matrix_i8 t = affine_codes(q, mu, s, -8, 7, false);
        if (gptq && r.affine_refit) refit_after_gptq(w, t, *h, mu, s);
        round_fp16(s);
        round_fp16(mu);
        return packed_record(pack<int4>(t, s, mu));
    }
    case weight_scheme::absmean_ternary:
    case weight_scheme::e2m_atq: {
        matrix_f q;
        vector_f mu, alpha;
        if (r.weights == weight_scheme::absmean_ternary) {
            require(!gptq, "quantize_model", "absmean ternary runs without GPTQ (use e2m_atq)");
            const auto tq = quantize_ternary(w, absmean{});
            alpha = tq.scale.col(0);
            q = tq.dequantize();
        } else if (gptq) {
            gptq_options eo = gopt;
            eo.gram_fit = r.gram_stage2;
            auto res = gptq_quantize(w, *h, e2m_atq_quantizer{}, per_row{}, eo);
            q = std::move(res.weights);
            mu = res.params.front().mean;
            alpha = res.params.front().alpha0;
        } else {
            const e2m_atq_quantizer eq{};
            const auto p = eq.fit(w);
            q = round_columns(eq, p, w);
            mu = p.mean;
            alpha = p.alpha0;
        }
        const matrix_i8 t = affine_codes(q, mu, alpha, -1, 1, false);
        if (gptq && r.affine_refit) refit_after_gptq(w, t, *h, mu, alpha);
        round_fp16(alpha);
        round_fp16(mu);
        if (r.base3) return packed_record(pack<ternary_base3>(t, alpha, mu));
        return packed_record(pack<ternary2>(t, alpha, mu));
    }
    case weight_scheme::sign_binary:
    case weight_scheme::arb_binary: {
        // Binarizes a whole matrix (RTN or GPTQ): values and per-row (μ, α).
        auto binarize_matrix = [&](const matrix_f& m, vector_f* mu, vector_f* alpha) -> matrix_f {
            if (gptq) {
                auto run = [&](const auto& quantizer) {
                    gptq_options bo = gopt;
                    bo.gram_fit = GramAwareGroupQuantizer<std::decay_t<decltype(quantizer)>>;
                    auto res = gptq_quantize(m, *h, quantizer, per_row{}, bo);
                    if (mu) *mu = res.params.front().mean;
                    if (alpha) *alpha = res.params.front().alpha0;
                    return matrix_f(std::move(res.weights));
                };
                if (r.weights == weight_scheme::arb_binary)
                    return r.gram_stage2 ? run(binary_quantizer<arb_x>{}) : run(binary_quantizer<arb>{});
                return run(binary_quantizer<sign_scale>{sign_scale{true}});
            }
            const binary_tensor bt = r.weights == weight_scheme::arb_binary ? binarize(m, arb{}, per_row{})
                                                                           : binarize(m, sign_scale{true}, per_row{});
            if (mu) *mu = bt.mean.col(0);
            if (alpha) *alpha = bt.alpha[0].col(0);
            return bt.dequantize();
        };
        std::optional<low_rank> lr;
        matrix_f target = w;
        if (r.low_rank > 0) {
            const auto fq = [&](const cref_matrix_f& m) { return binarize_matrix(m, nullptr, nullptr); };
            const matrix_d gram = h ? matrix_d(*h) : matrix_d();
            auto pr = r.psp_gradient ? psp_refine_gradient(w, fq, r.low_rank, r.psp_iterations, gram, 0.01, r.seed)
                                     : psp_refine(w, fq, r.low_rank, r.psp_iterations, gram, 0.01);
            for (Eigen::Index i = 0; i < pr.correction.a.size(); ++i)
                pr.correction.a.data()[i] = round_fp16(pr.correction.a.data()[i]);
            for (Eigen::Index i = 0; i < pr.correction.b.size(); ++i)
                pr.correction.b.data()[i] = round_fp16(pr.correction.b.data()[i]);
            target = w - pr.correction.reconstruct();
            lr = std::move(pr.correction);
        }
        vector_f mu, alpha;
        const matrix_f q = binarize_matrix(target, &mu, &alpha);
        const matrix_i8 t = affine_codes(q, mu, alpha, -1, 1, true);
        if (gptq && r.affine_refit) refit_after_gptq(target, t, *h, mu, alpha);
        round_fp16(alpha);
        round_fp16(mu);
        return packed_record(pack<binary1>(t, alpha, mu), std::move(lr));
    }
    }
    throw invalid_argument("lowbit: recipe '" + r.name + "': unknown weight scheme");
}

/// SpecQuant for one block linear `w` `[out x in]` (recipe `r` with `specquant`; `h` the Hessian of the
/// layer's unsmoothed calibration inputs or null for RTN; `act_absmax` their per-channel absmax, size in,
/// zeros where no input was seen): λ = fp16(smoothquant_scales_from_absmax(act_absmax, w, spec_alpha))
/// (clamped to fp16's positive normal range; λ = 1 with `spec_smooth` false, then not stored),
/// W' = W·diag(λ), per row the lowest frequencies by `spec_eta` / `spec_k_max` (`spectral_truncate`), their
/// coefficients rounded to fp16, W_FFT = `spectral_synthesis` of those, R = W' − W_FFT quantized by
/// `quantize_linear` (int4, GPTQ with H' = diag(λ)⁻¹·H·diag(λ)⁻¹, the Hessian of x' = x·diag(λ)⁻¹).
/// \throws numeric_error (a coefficient beyond fp16's range), as `quantize_linear` and `spectral_truncate`.
template <class = void>
linear_record specquant_record(const recipe& r, const matrix_f& w, const matrix_d* h, const vector_f& act_absmax) {
    constexpr const char* where = "quantize_model";
    vector_f lambda;
    matrix_f ws = w;
    std::optional<matrix_d> hs;
    if (r.spec_smooth) {
        lambda = smoothquant_scales_from_absmax(act_absmax, w, r.spec_alpha);
        for (Eigen::Index j = 0; j < lambda.size(); ++j)
            lambda(j) = round_fp16(std::clamp(lambda(j), 6.103515625e-05f, 65504.0f)); // fp16 normal range
        ws = smooth_weights(w, lambda);
        if (h) {
            const Eigen::VectorXd inv = lambda.cast<double>().cwiseInverse();
            hs = inv.asDiagonal() * (*h) * inv.asDiagonal();
        }
    }
    spectral_truncation opt;
    opt.eta = r.spec_eta;
    opt.k_max = r.spec_k_max;
    spectral_split split = spectral_truncate(ws, opt);
    for (auto& c : split.coefficients)
        for (Eigen::Index f = 0; f < c.size(); ++f) {
            const float re = round_fp16(c(f).real()), im = round_fp16(c(f).imag());
            require<numeric_error>(std::isfinite(re) && std::isfinite(im), where,
                                   "a SpecQuant coefficient exceeds the fp16 range");
            c(f) = std::complex<float>(re, im);
        }
    const matrix_f residual = ws - spectral_synthesis(split.coefficients, ws.cols());
    linear_record rec = quantize_linear(r, residual, hs ? &*hs : h);
    rec.smoothing = std::move(lambda);
    rec.spectrum = std::move(split.coefficients);
    return rec;
}

/// What `learn_block_rotation` returns: the learned rotation (none when the recipe learns nothing for
/// this linear) and the text `linear_record::rotation_status` keeps.
struct learned_block_rotation {
    std::optional<stored_rotation> rotation;
    std::string status;
};

/// The rotation recipe `r` learns for block linear `w` `[out x n]` (already rotated by the recipe's
/// Hadamard), entries rounded to fp16: KOTMS / OKT factors with the KOTMS size rule at every size
/// (unless a factor exceeds `r.rotation_max_factor` > 0 or the fp16 factors would add more than
/// `r.rotation_max_bits` > 0 bits per weight: then nothing is learned and the status says so),
/// TORQ from the layer's calibration inputs `x` (none when 32 ∤ n, status says so). KOTMS runs with
/// `kotms_layer_options` (published full-batch Adam up to 2²¹ weights, stochastic Procrustes EM above),
/// OKT with its defaults. Complexity: as `learn_kotms` / `learn_okt` / `learn_torq` (docs/transforms.md
/// "Learning time").
template <class = void>
learned_block_rotation learn_block_rotation(const recipe& r, const matrix_f& w, const matrix_f& x) {
    const Eigen::Index n = w.cols();
    auto fixed = [](double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.4g", v);
        return std::string(buf);
    };
    learned_block_rotation out;
    if (r.rotation == rotation_kind::torq) {
        if (n % 32 != 0) {
            out.status = "torq not learned: width " + std::to_string(n) + " is not a multiple of 32; Hadamard only";
            return out;
        }
        require<shape_error>(x.rows() > 0, "quantize_model", "TORQ needs calibration inputs");
        torq_options to;
        to.seed = r.seed + static_cast<std::uint64_t>(n);
        stored_rotation s;
        s.dense = fp16_rounded(learn_torq(x, to).matrix().cast<float>());
        out.rotation = std::move(s);
        out.status = "torq learned from " + std::to_string(x.rows()) + " input rows";
        return out;
    }
    if (r.rotation != rotation_kind::kotms && r.rotation != rotation_kind::okt) return out;
    const std::string method = r.rotation == rotation_kind::kotms ? "kotms" : "okt";
    const kronecker_factor_sizes sz = kotms_factor_sizes(w.rows(), n);
    const std::string sizes = "(" + std::to_string(sz.l) + ", " + std::to_string(sz.r) + ")";
    if (r.rotation_max_factor > 0 && (sz.l > r.rotation_max_factor || sz.r > r.rotation_max_factor)) {
        out.status = method + " not learned: factors " + sizes + " exceed rotation_max_factor " +
                     std::to_string(r.rotation_max_factor) + "; Hadamard only";
        return out;
    }
    const double extra_bits = 16.0 * static_cast<double>(sz.l * sz.l + sz.r * sz.r) / static_cast<double>(w.rows() * n);
    if (r.rotation_max_bits > 0 && extra_bits > r.rotation_max_bits) {
        char buf[160];
        std::snprintf(buf, sizeof buf, " not learned: factors %s would add %.3g bits per weight > rotation_max_bits %.3g; Hadamard only",
                      sizes.c_str(), extra_bits, r.rotation_max_bits);
        out.status = method + buf;
        return out;
    }
    rotation_learning_result res;
    std::string how;
    if (r.rotation == rotation_kind::kotms) {
        const kotms_options ko = kotms_layer_options(w.rows(), n);
        if (ko.method == kotms_method::procrustes_em)
            how = " by stochastic Procrustes EM (" + std::to_string(ko.iters) + " rounds, " +
                  std::to_string(detail::minibatch_count(w.rows(), n, ko.batch_entries)) + " row batches)";
        res = learn_kotms(w, ko);
    } else {
        okt_options oo;
        oo.sizes = sz;
        res = learn_okt(w, oo);
    }
    stored_rotation s;
    s.left = fp16_rounded(res.rotation.left);
    s.right = fp16_rounded(res.rotation.right);
    out.rotation = std::move(s);
    out.status = method + " " + sizes + " learned" + how;
    if (!res.loss_history.empty())
        out.status += ", loss " + fixed(res.loss_history.front()) + " -> " + fixed(res.loss_history.back());
    return out;
}

} // namespace detail

/// The Hadamard part of the online rotation recipe `r` applies to inputs of width `n`: none (no
/// rotation; TORQ at widths that are multiples of 32) or the randomised Hadamard transform seeded by
/// `r.seed + n`. Deterministic: saving a model stores only the recipe (and the learned part per layer).
/// \throws invalid_argument (n < 1).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] std::optional<hadamard_transform> recipe_rotation(const recipe& r, Eigen::Index n) {
    if (r.rotation == rotation_kind::none) return std::nullopt;
    if (r.rotation == rotation_kind::torq && n % 32 == 0) return std::nullopt;
    if ((r.rotation == rotation_kind::kotms || r.rotation == rotation_kind::okt) && !r.hadamard_first) return std::nullopt;
    hadamard_options ho;
    ho.randomized = true;
    ho.seed = r.seed + static_cast<std::uint64_t>(n);
    return hadamard_transform(n, ho);
}

/// The stored form of every block linear of a quantized model, keyed by `linear_id::name()`
/// ("layers.3.wq", "layers.1.experts.5.w2").
using linear_records = std::map<std::string, linear_record>;

namespace detail {

/// A record's tunable view (`tunable_linear`) and how its offsets follow the scales: `tie` (rows) holds
/// k_i when every row's offset is a whole multiple μ_i = k_i·α_i (|k_i| ≤ 2; lowbit's symmetric int4 grid
/// has k = 1); then only α is tuned, on the codes t + k_i, and μ_i = k_i·α_i stays a whole multiple of
/// α_i (fp16-exact for |k| ≤ 2) — so tuning keeps a record GGUF-exportable. Empty: α and μ tuned freely.
struct tunable_record {
    tunable_linear layer;
    vector_f tie;
};

/// The tunable view of a packed record (per-row or grouped int4 formats; not records with a low-rank
/// correction, SpecQuant parts or an expert format), or nothing.
template <class = void> // compiled only where called (docs/compile_time.md)
std::optional<tunable_record> tunable_of_record(const linear_id& id, const linear_record& rec, const block_rotation& rot) {
    if (rec.correction || rec.smoothing.size() || !rec.spectrum.empty()) return std::nullopt;
    tunable_record tr;
    tunable_linear& t = tr.layer;
    t.id = id;
    const auto decode = [&]<class F>(F) {
        typename packed_matrix<F>::buffer bytes(rec.codes.begin(), rec.codes.end());
        t.code_min = pack_format<F>::code_min;
        t.code_max = pack_format<F>::code_max;
        t.zero_code = pack_format<F>::digit_mul == 1;
        return decode_codes(packed_matrix<F>(rec.rows, rec.cols, std::move(bytes), vector_f::Ones(rec.rows)));
    };
    if (rec.format == pack_format<int4>::name) t.codes = decode(int4{});
    else if (rec.format == "int4_g128" || rec.format == "int4_g256") {
        (void)grouped_of_record(rec); // validates the scale and offset counts
        t.codes = decode(int4{});
        t.group_cols = rec.format == "int4_g256" ? 256 : 128;
    } else if (rec.format == pack_format<ternary2>::name) t.codes = decode(ternary2{});
    else if (rec.format == pack_format<ternary_base3>::name) t.codes = decode(ternary_base3{});
    else if (rec.format == pack_format<binary1>::name) t.codes = decode(binary1{});
    else return std::nullopt;
    t.scale = rec.scale;
    t.offset = rec.offset;
    if (t.group_cols == 0 && rec.offset.size() == rec.rows && rec.scale.size() == rec.rows) {
        vector_f k(rec.rows);
        bool whole = true;
        for (Eigen::Index i = 0; i < rec.rows && whole; ++i) {
            const float a = rec.scale(i), m = rec.offset(i);
            k(i) = a != 0.0f ? std::round(m / a) : 0.0f;
            whole = a != 0.0f && std::abs(k(i)) <= 2.0f && k(i) * a == m;
        }
        if (whole) {
            for (Eigen::Index i = 0; i < rec.rows; ++i)
                t.codes.row(i).array() += static_cast<std::int8_t>(k(i));
            t.code_shift = k;
            tr.tie = std::move(k);
            t.offset.resize(0);
        }
    }
    if (!rot.empty()) t.input_transform = [rot](Eigen::Ref<matrix_f> g) { rot.apply_rows(g); };
    return tr;
}

/// `recipe::tune_steps` > 0: E2E scale tuning of every tunable record of `m` (model/scale_tuning.hpp);
/// the records and `m` get the kept fp16 scales and offsets.
template <class RotationFor>
void tune_record_scales(llama_model& m, const recipe& r, linear_records& records, std::span<const int> calib_tokens,
                        const quantize_options& opt, RotationFor& rotation_for) {
    std::vector<tunable_linear> layers;
    std::vector<vector_f> ties;
    std::vector<linear_record*> recs;
    for (int l = 0; l < static_cast<int>(m.blocks.size()); ++l)
        for (const linear_id& id : m.block_linears(l)) {
            const auto it = records.find(id.name());
            if (it == records.end()) continue;
            auto t = tunable_of_record(id, it->second, block_rotation::from(rotation_for(it->second.cols), it->second.rotation));
            if (!t) continue;
            layers.push_back(std::move(t->layer));
            ties.push_back(std::move(t->tie));
            recs.push_back(&it->second);
        }
    std::map<std::string, std::size_t> index;
    for (std::size_t n = 0; n < layers.size(); ++n) index.emplace(layers[n].id.name(), n);
    const auto offsets = [&](std::size_t n, const tunable_linear& t) { // μ = k·α for tied records
        return ties[n].size() ? vector_f(ties[n].cwiseProduct(t.scale)) : t.offset;
    };
    std::vector<std::uint64_t> packed(layers.size()); // code revision each record holds
    for (std::size_t n = 0; n < layers.size(); ++n) packed[n] = layers[n].code_revision;
    const auto repack = [&](std::size_t n, const tunable_linear& t, linear_record& rec) { // codes back into the record
        if (t.code_revision == packed[n]) return; // no code changed since the last pack
        packed[n] = t.code_revision;
        matrix_i8 c = t.codes;
        if (ties[n].size())
            for (Eigen::Index i = 0; i < c.rows(); ++i) c.row(i).array() -= static_cast<std::int8_t>(ties[n](i));
        const auto put = [&]<class F>(F) {
            const auto p = pack<F>(c, vector_f::Ones(c.rows()));
            rec.codes.assign(p.bytes().begin(), p.bytes().end());
        };
        if (rec.format == pack_format<ternary2>::name) put(ternary2{});
        else if (rec.format == pack_format<ternary_base3>::name) put(ternary_base3{});
        else if (rec.format == pack_format<binary1>::name) put(binary1{});
        else put(int4{}); // int4 and the grouped int4 formats (tunable_of_record admits no other)
    };
    const tunable_rebuild rebuild = [&](const tunable_linear& t) {
        const std::size_t n = index.at(t.id.name());
        linear_record& rec = *recs[n];
        rec.scale = t.scale;
        rec.offset = offsets(n, t);
        if (r.tune_code_lr > 0) repack(n, t, rec);
        return build_linear(r, rec, rotation_for(rec.cols));
    };
    scale_tuning_options so;
    so.code_lr = r.tune_code_lr;
    so.steps = r.tune_steps;
    so.lr = r.tune_lr;
    so.window = opt.calib_window;
    so.windows = r.tune_windows;
    so.holdout_windows = r.tune_windows;
    so.progress = opt.progress;
    (void)tune_quantization_scales(m, layers, rebuild, calib_tokens, so);
    for (std::size_t n = 0; n < layers.size(); ++n) {
        recs[n]->scale = layers[n].scale;
        recs[n]->offset = offsets(n, layers[n]);
        if (r.tune_code_lr > 0) repack(n, layers[n], *recs[n]);
    }
}

} // namespace detail

/// Quantizes every block linear of `fp32` (a model whose block linears are FP32 `dense_linear`s,
/// e.g. `model_from_llama2c`, `load_hf_model` or `random_llama`) with recipe `r`: attention
/// linears, dense FFN linears and every expert's w1/w2/w3 (routers stay float). Calibrated
/// recipes (GPTQ, PSP, TORQ) quantize block by block: block l's Hessians come from `calib_tokens`
/// run through the model whose blocks < l are already quantized (inputs rotated when the recipe
/// rotates); an expert's Hessian uses the calibration tokens routed to it (an expert no
/// calibration token reaches gets H = I, i.e. round-to-nearest, and the progress line says so).
/// ILA-AMP recipes (`recipe::ila_mean_bits` > 0) first measure the ILA-AMP tables on `calib_tokens`
/// (`ila_amp_model_tables`: the model with the recipe's rotations — KOTMS/OKT factors learned here
/// and reused — and FP32 weights, `ila_windows` windows per evaluation, one progress line each),
/// pick one width per block by the DP (`ila_amp_allocate`; one progress line with the widths), and
/// every record of block l then runs, and stores, that width (`linear_record::act_bits`); the
/// GPTQ calibration of later blocks runs through the earlier blocks at their chosen widths.
///
/// \param calib_tokens  encoded calibration text (no BOS), at least one window; ignored by
///                      calibration-free recipes.
/// \param records       optional out: the stored form of every block linear (for saving).
/// \throws invalid_argument (inconsistent recipe, non-dense input model), shape_error (too few
///         calibration tokens), numeric_error (a Hessian that damping cannot repair).
/// Complexity: per calibrated block, one forward pass over the calibration windows plus the
/// solver (GPTQ O(n³ + m n²) per linear); ILA-AMP adds 1 + (K−1)L + (K−1)²(L−1) forward passes over
/// `ila_windows` windows (K candidates, L blocks).
template <class = void>
[[nodiscard]] llama_model quantize_model(const llama_model& fp32, const recipe& r,
                                         std::span<const int> calib_tokens, const quantize_options& opt = {},
                                         linear_records* records = nullptr) {
    constexpr const char* where = "quantize_model";
    detail::check_recipe(r);
    llama_model m = r.residual_rotation ? rotate_residual_stream(fp32, residual_rotation_matrix(fp32.config.dim, r.seed)) : fp32;
    m.nonlinear = recipe_nonlinear_ops(r); // calibration runs through the recipe's own operators
    if (records) records->clear();
    linear_records own; // scale tuning works on the records even when the caller keeps none
    linear_records* out = records ? records : r.tune_steps > 0 ? &own : nullptr;
    if (r.needs_calibration())
        detail::require<shape_error>(!calib_tokens.empty(), where, "calibrated recipes need calibration tokens");
    // Hessians / inputs per block (ILA-AMP alone needs the tokens only for its tables)
    const bool calibrate = r.solver == solver_kind::gptq || r.low_rank > 0 || r.rotation == rotation_kind::torq || r.specquant;
    // One rotation per input width (dim, hidden), shared by the layers that read that width.
    std::vector<std::pair<Eigen::Index, std::optional<hadamard_transform>>> rotations;
    auto rotation_for = [&](Eigen::Index n) -> const std::optional<hadamard_transform>& {
        for (auto& [k, t] : rotations)
            if (k == n) return t;
        rotations.emplace_back(n, recipe_rotation(r, n));
        return rotations.back().second;
    };
    const bool keep_inputs = r.rotation == rotation_kind::torq; // TORQ learns from input samples
    constexpr Eigen::Index max_kept_rows = 4096;
    // ILA-AMP: KOTMS/OKT factors depend on the FP32 weights only, so they are learned first (and
    // reused below); the tables run the rotated FP32 model, then the DP fixes every block's width.
    std::map<std::string, detail::learned_block_rotation> learned_first;
    std::vector<int> block_bits;
    if (r.ila_mean_bits > 0) {
        llama_model base = m;
        linear_records fp; // W·H·K dense with its learned rotation, per linear
        const int top = detail::ila_candidates(r.ila_bits, where).back();
        for (int l = 0; l < static_cast<int>(m.blocks.size()); ++l)
            for (const linear_id& id : m.block_linears(l)) {
                matrix_f w = detail::dense_weight_of(m.linear(id), where);
                const auto& rot = rotation_for(w.cols());
                if (rot) rot->apply_rows(w);
                detail::learned_block_rotation lr = detail::learn_block_rotation(r, w, matrix_f());
                linear_record rec;
                rec.format = "dense";
                rec.rows = w.rows();
                rec.cols = w.cols();
                if (lr.rotation) block_rotation::from(std::nullopt, lr.rotation).apply_rows(w);
                rec.dense = std::move(w);
                rec.rotation = lr.rotation;
                rec.act_bits = top;
                base.set_linear(id, build_linear(r, rec, rot));
                learned_first.emplace(id.name(), std::move(lr));
                fp.emplace(id.name(), std::move(rec));
            }
        const ila_block_builder build = [&](int l, int bits) {
            std::vector<std::pair<linear_id, std::shared_ptr<const linear_operator>>> ops;
            for (const linear_id& id : m.block_linears(l)) {
                linear_record& rec = fp.at(id.name());
                rec.act_bits = bits;
                ops.emplace_back(id, build_linear(r, rec, rotation_for(rec.cols)));
                rec.act_bits = top;
            }
            return ops;
        };
        ila_amp_options io;
        io.candidates = r.ila_bits;
        io.mean_bits = r.ila_mean_bits;
        io.beta = r.ila_beta;
        io.progress = opt.progress;
        const ila_amp_tables t = ila_amp_model_tables(base, build, calib_tokens, opt.calib_window, r.ila_windows, io);
        const bit_allocation a = ila_amp_allocate(t, r.ila_mean_bits, r.ila_beta);
        block_bits = a.bits;
        if (opt.progress) {
            std::string list;
            for (int b : block_bits) list += (list.empty() ? "" : " ") + std::to_string(b);
            const int budget = static_cast<int>(std::lround(r.ila_mean_bits * static_cast<double>(block_bits.size())));
            opt.progress("ila-amp: per-block activation bits " + list + " (sum " + std::to_string(a.total_bits) +
                         " <= budget " + std::to_string(budget) + ", mean " +
                         detail::ila_real(static_cast<double>(a.total_bits) / static_cast<double>(block_bits.size()), "%.2f") +
                         "; DP objective " + detail::ila_real(a.cost, "%+.5f") + " nats over NLL_base " +
                         detail::ila_real(t.nll_base, "%.5f") + "; " + std::to_string(t.evaluations) +
                         " NLL evaluations on " + std::to_string(r.ila_windows) + " calibration windows)");
        }
    }
    for (int l = 0; l < static_cast<int>(m.blocks.size()); ++l) {
        const std::vector<linear_id> ids = m.block_linears(l);
        std::map<std::string, gptq_hessian> hess;
        std::map<std::string, matrix_f> inputs; // Hadamard-rotated calibration inputs (TORQ only)
        std::map<std::string, vector_f> absmax;  // per-input-channel max |x| (SpecQuant only)
        if (calibrate) {
            auto add = [&](const linear_id& id, const matrix_f& x) {
                const std::string key = id.name();
                if (r.specquant) {
                    const vector_f a = activation_absmax(x);
                    const auto [it, fresh] = absmax.try_emplace(key, a);
                    if (!fresh) it->second = it->second.cwiseMax(a);
                }
                matrix_f xr = x;
                if (const auto& rot = rotation_for(x.cols())) rot->apply_rows(xr);
                hess.try_emplace(key, x.cols()).first->second.add(xr);
                if (keep_inputs) {
                    auto& kept = inputs[key];
                    if (kept.rows() < max_kept_rows) {
                        const Eigen::Index take = std::min(xr.rows(), max_kept_rows - kept.rows());
                        kept.conservativeResize(kept.rows() + take, xr.cols());
                        kept.bottomRows(take) = xr.topRows(take);
                    }
                }
            };
            forward_hooks hooks;
            hooks.on_linear_input = [&](int layer, linear_slot s, const matrix_f& x) {
                if (layer == l) add(linear_id{layer, s}, x);
            };
            hooks.on_expert_input = [&](int layer, int e, linear_slot s, const matrix_f& x, const vector_f&,
                                        std::span<const Eigen::Index>) {
                if (layer == l) add(linear_id{layer, s, e}, x);
            };
            capture_linear_inputs(m, calib_tokens, hooks, opt.calib_window, opt.calib_windows);
        }
        for (const linear_id& id : ids) {
            const std::string key = id.name();
            matrix_f w = detail::dense_weight_of(m.linear(id), where);
            const auto& rot = rotation_for(w.cols());
            if (rot) rot->apply_rows(w); // W·Q: rows of W are input-space vectors
            matrix_d h;
            bool uncalibrated = false;
            if (calibrate) {
                const auto it = hess.find(key);
                if (it != hess.end()) h = it->second.matrix();
                else {
                    h = matrix_d::Identity(w.cols(), w.cols()); // no routed calibration token: plain rounding
                    uncalibrated = true;
                }
            }
            const auto kin = inputs.find(key);
            const auto first = learned_first.find(key);
            detail::learned_block_rotation lr =
                first != learned_first.end() ? std::move(first->second)
                                             : detail::learn_block_rotation(r, w, kin != inputs.end() ? kin->second : matrix_f());
            std::optional<stored_rotation>& learned = lr.rotation;
            if (learned) { // W·H·K, and the Hessian of the inputs x·H·K: Kᵀ H K
                const block_rotation k = block_rotation::from(std::nullopt, learned);
                k.apply_rows(w);
                if (calibrate) {
                    matrix_f q = matrix_f::Identity(w.cols(), w.cols());
                    k.apply_rows(q); // rows of I·K = K
                    const matrix_d kd = q.cast<double>();
                    h = kd.transpose() * h * kd;
                }
            }
            linear_record rec;
            if (r.specquant) {
                const auto am = absmax.find(key);
                const vector_f a = am != absmax.end() ? am->second : vector_f(vector_f::Zero(w.cols()));
                rec = detail::specquant_record(r, w, r.solver == solver_kind::gptq ? &h : nullptr, a);
            } else {
                rec = detail::quantize_linear(detail::recipe_for_linear(r, key), w, calibrate ? &h : nullptr);
            }
            rec.rotation = std::move(learned);
            rec.rotation_status = std::move(lr.status);
            if (!block_bits.empty()) rec.act_bits = block_bits[static_cast<std::size_t>(l)];
            m.set_linear(id, build_linear(r, rec, rot));
            if (opt.progress)
                opt.progress(key + " " + std::to_string(w.rows()) + "x" + std::to_string(w.cols()) + " quantized (" +
                             r.name + (is_int4_linear(r, key) ? "; grouped int4 (int4_linears)" : "") +
                             (uncalibrated ? "; no calibration token routed here: H = I" : "") +
                             (rec.act_bits ? "; int" + std::to_string(rec.act_bits) + " activations (ILA-AMP)" : "") +
                             (rec.rotation_status.empty() ? "" : "; " + rec.rotation_status) + ")");
            if (out) (*out)[key] = std::move(rec);
        }
    }
    if (r.tune_steps > 0) detail::tune_record_scales(m, r, *out, calib_tokens, opt, rotation_for);
    return m;
}

LOWBIT_END_NAMESPACE

LOWBIT_BEGIN_NAMESPACE

/// A quantized model with what it was built from: the recipe, every block linear's record and,
/// optionally, the tokenizer file it was evaluated with (so a saved model is self-contained).
struct quantized_model {
    recipe spec;                 ///< the recipe (every field is saved)
    llama_model model;           ///< the runnable model
    linear_records records;      ///< stored form of the block linears, keyed by linear_id::name()
    std::string tokenizer_format; ///< "llama2c" (tokenizer.bin) or "hf-json" (tokenizer.json); empty: none stored
    std::vector<std::uint8_t> tokenizer_bytes; ///< the tokenizer file's bytes
};

namespace detail {

struct enum_name {
    int value;
    const char* name;
};
inline constexpr enum_name weight_scheme_names[] = {
    {static_cast<int>(weight_scheme::fp32), "fp32"},           {static_cast<int>(weight_scheme::int4), "int4"},
    {static_cast<int>(weight_scheme::absmean_ternary), "absmean_ternary"},
    {static_cast<int>(weight_scheme::e2m_atq), "e2m_atq"},     {static_cast<int>(weight_scheme::sign_binary), "sign_binary"},
    {static_cast<int>(weight_scheme::arb_binary), "arb_binary"}, {static_cast<int>(weight_scheme::mxfp4), "mxfp4"},
    {static_cast<int>(weight_scheme::tra_ternary), "tra_ternary"},
    {static_cast<int>(weight_scheme::billm_binary), "billm_binary"}};
inline constexpr enum_name solver_names[] = {{static_cast<int>(solver_kind::rtn), "rtn"},
                                             {static_cast<int>(solver_kind::gptq), "gptq"}};
inline constexpr enum_name rotation_names[] = {
    {static_cast<int>(rotation_kind::none), "none"},   {static_cast<int>(rotation_kind::randomized_hadamard), "hadamard"},
    {static_cast<int>(rotation_kind::kotms), "kotms"}, {static_cast<int>(rotation_kind::okt), "okt"},
    {static_cast<int>(rotation_kind::torq), "torq"}};
inline constexpr enum_name activation_names[] = {
    {static_cast<int>(activation_kind::fp32), "fp32"}, {static_cast<int>(activation_kind::int_symmetric), "int_symmetric"},
    {static_cast<int>(activation_kind::int_asymmetric), "int_asymmetric"}, {static_cast<int>(activation_kind::mxfp4), "mxfp4"}};

template <class E, std::size_t N>
inline const char* name_of(E v, const enum_name (&table)[N]) {
    for (const auto& e : table)
        if (e.value == static_cast<int>(v)) return e.name;
    return "?";
}
template <class E, std::size_t N>
inline E value_of(std::string_view name, const enum_name (&table)[N], const std::string& field) {
    std::string known;
    for (const auto& e : table) {
        if (name == e.name) return static_cast<E>(e.value);
        known += known.empty() ? e.name : std::string(", ") + e.name;
    }
    throw invalid_argument("lowbit: recipe field '" + field + "': unknown value '" + std::string(name) + "' (known: " + known + ")");
}

/// Splits "k=v;k=v" into pairs. \throws invalid_argument (an entry without '=' or a repeated key).
inline std::vector<std::pair<std::string, std::string>> split_fields(std::string_view s, char sep, const char* what) {
    std::vector<std::pair<std::string, std::string>> out;
    std::size_t at = 0;
    while (at < s.size()) {
        std::size_t end = s.find(sep, at);
        if (end == std::string_view::npos) end = s.size();
        const std::string_view part = s.substr(at, end - at);
        at = end + 1;
        if (part.empty()) continue;
        const auto eq = part.find('=');
        if (eq == std::string_view::npos || eq == 0)
            throw invalid_argument(std::string("lowbit: ") + what + ": entry '" + std::string(part) + "' is not key=value");
        std::string k(part.substr(0, eq));
        for (const auto& [ok, ov] : out)
            if (ok == k) throw invalid_argument(std::string("lowbit: ") + what + ": key '" + k + "' given twice");
        out.emplace_back(std::move(k), std::string(part.substr(eq + 1)));
    }
    return out;
}

inline long long parse_integer(const std::string& v, const std::string& field) {
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || !end || *end || errno) throw invalid_argument("lowbit: field '" + field + "': '" + v + "' is not an integer");
    return x;
}
inline double parse_real(const std::string& v, const std::string& field) {
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || !end || *end || !std::isfinite(x)) throw invalid_argument("lowbit: field '" + field + "': '" + v + "' is not a finite number");
    return x;
}
inline bool parse_flag(const std::string& v, const std::string& field) {
    if (v == "true" || v == "1") return true;
    if (v == "false" || v == "0") return false;
    throw invalid_argument("lowbit: field '" + field + "': '" + v + "' is not true/false");
}
inline std::string real_text(double x) {
    char b[40];
    std::snprintf(b, sizeof b, "%.17g", x);
    return b;
}

} // namespace detail

/// Every field of a recipe except its name and description as "key=value" entries joined by ';'
/// (the form saved models record and `lowbit-quantize --set` takes), in a fixed order:
/// weights, solver, rotation, activation, act_bits, act_clip, low_rank, psp_iterations, psp_gradient, base3,
/// damp, act_order, seed, rotation_max_factor, rotation_max_bits, hadamard_first, nli, residual_rotation,
/// gram_stage2, affine_refit, group_size, clip_grid, ila_mean_bits, ila_bits (widths joined by '/', e.g.
/// "2/4/6/8"), ila_beta, ila_windows, specquant, spec_smooth, spec_alpha, spec_eta, spec_k_max, tune_steps,
/// tune_lr, tune_windows, tune_code_lr, billm_split, int4_linears (names joined by '/'). Numbers
/// round-trip exactly.
[[nodiscard]] inline std::string recipe_fields(const recipe& r) {
    std::string s;
    auto put = [&](const char* k, const std::string& v) { s += (s.empty() ? "" : ";") + std::string(k) + "=" + v; };
    put("weights", detail::name_of(r.weights, detail::weight_scheme_names));
    put("solver", detail::name_of(r.solver, detail::solver_names));
    put("rotation", detail::name_of(r.rotation, detail::rotation_names));
    put("activation", detail::name_of(r.activation, detail::activation_names));
    put("act_bits", std::to_string(r.act_bits));
    put("act_clip", detail::real_text(r.act_clip));
    put("low_rank", std::to_string(r.low_rank));
    put("psp_iterations", std::to_string(r.psp_iterations));
    put("psp_gradient", r.psp_gradient ? "true" : "false");
    put("base3", r.base3 ? "true" : "false");
    put("damp", detail::real_text(r.damp));
    put("act_order", r.act_order ? "true" : "false");
    put("seed", std::to_string(r.seed));
    put("rotation_max_factor", std::to_string(r.rotation_max_factor));
    put("rotation_max_bits", detail::real_text(r.rotation_max_bits));
    put("hadamard_first", r.hadamard_first ? "true" : "false");
    put("nli", r.nli ? "true" : "false");
    put("residual_rotation", r.residual_rotation ? "true" : "false");
    put("gram_stage2", r.gram_stage2 ? "true" : "false");
    put("affine_refit", r.affine_refit ? "true" : "false");
    put("group_size", std::to_string(r.group_size));
    put("clip_grid", std::to_string(r.clip_grid));
    put("ila_mean_bits", detail::real_text(r.ila_mean_bits));
    std::string cand;
    for (int b : r.ila_bits) cand += (cand.empty() ? "" : "/") + std::to_string(b);
    put("ila_bits", cand);
    put("ila_beta", detail::real_text(r.ila_beta));
    put("ila_windows", std::to_string(r.ila_windows));
    put("specquant", r.specquant ? "true" : "false");
    put("spec_smooth", r.spec_smooth ? "true" : "false");
    put("spec_alpha", detail::real_text(r.spec_alpha));
    put("spec_eta", detail::real_text(r.spec_eta));
    put("spec_k_max", std::to_string(r.spec_k_max));
    put("tune_steps", std::to_string(r.tune_steps));
    put("tune_lr", detail::real_text(r.tune_lr));
    put("tune_windows", std::to_string(r.tune_windows));
    put("tune_code_lr", detail::real_text(r.tune_code_lr));
    put("billm_split", r.billm_split ? "true" : "false");
    put("int4_linears", r.int4_linears);
    return s;
}

/// Applies "key=value" entries separated by `sep` (';' or ',') to `r` (the keys of `recipe_fields`;
/// any subset, in any order). \throws invalid_argument (unknown key, malformed value, repeated key).
inline void set_recipe_fields(recipe& r, std::string_view fields, char sep) {
    for (const auto& [k, v] : detail::split_fields(fields, sep, "recipe fields")) {
        if (k == "weights") r.weights = detail::value_of<weight_scheme>(v, detail::weight_scheme_names, k);
        else if (k == "solver") r.solver = detail::value_of<solver_kind>(v, detail::solver_names, k);
        else if (k == "rotation") r.rotation = detail::value_of<rotation_kind>(v, detail::rotation_names, k);
        else if (k == "activation") r.activation = detail::value_of<activation_kind>(v, detail::activation_names, k);
        else if (k == "act_bits") r.act_bits = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "act_clip") r.act_clip = static_cast<float>(detail::parse_real(v, k));
        else if (k == "low_rank") r.low_rank = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "psp_iterations") r.psp_iterations = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "psp_gradient") r.psp_gradient = detail::parse_flag(v, k);
        else if (k == "base3") r.base3 = detail::parse_flag(v, k);
        else if (k == "damp") r.damp = detail::parse_real(v, k);
        else if (k == "act_order") r.act_order = detail::parse_flag(v, k);
        else if (k == "seed") {
            const long long x = detail::parse_integer(v, k);
            detail::require(x >= 0, "set_recipe_fields", "seed must be >= 0");
            r.seed = static_cast<std::uint64_t>(x);
        } else if (k == "rotation_max_factor") r.rotation_max_factor = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "rotation_max_bits") r.rotation_max_bits = detail::parse_real(v, k);
        else if (k == "hadamard_first") r.hadamard_first = detail::parse_flag(v, k);
        else if (k == "nli") r.nli = detail::parse_flag(v, k);
        else if (k == "residual_rotation") r.residual_rotation = detail::parse_flag(v, k);
        else if (k == "gram_stage2") r.gram_stage2 = detail::parse_flag(v, k);
        else if (k == "affine_refit") r.affine_refit = detail::parse_flag(v, k);
        else if (k == "group_size") r.group_size = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "clip_grid") r.clip_grid = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "ila_mean_bits") r.ila_mean_bits = detail::parse_real(v, k);
        else if (k == "ila_bits") {
            std::vector<int> c;
            std::size_t at = 0;
            while (at <= v.size()) {
                const std::size_t end = std::min(v.find('/', at), v.size());
                c.push_back(static_cast<int>(detail::parse_integer(v.substr(at, end - at), k)));
                at = end + 1;
            }
            r.ila_bits = std::move(c);
        } else if (k == "ila_beta") r.ila_beta = detail::parse_real(v, k);
        else if (k == "ila_windows") r.ila_windows = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "specquant") r.specquant = detail::parse_flag(v, k);
        else if (k == "spec_smooth") r.spec_smooth = detail::parse_flag(v, k);
        else if (k == "spec_alpha") r.spec_alpha = detail::parse_real(v, k);
        else if (k == "spec_eta") r.spec_eta = detail::parse_real(v, k);
        else if (k == "spec_k_max") r.spec_k_max = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "tune_steps") r.tune_steps = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "tune_lr") r.tune_lr = detail::parse_real(v, k);
        else if (k == "tune_windows") r.tune_windows = static_cast<int>(detail::parse_integer(v, k));
        else if (k == "tune_code_lr") r.tune_code_lr = detail::parse_real(v, k);
        else if (k == "billm_split") r.billm_split = detail::parse_flag(v, k);
        else if (k == "int4_linears") r.int4_linears = std::string(v);
        else
            throw invalid_argument("lowbit: set_recipe_fields: unknown recipe field '" + k + "' (known: " +
                                   "weights, solver, rotation, activation, act_bits, act_clip, low_rank, psp_iterations, "
                                   "psp_gradient, base3, damp, act_order, seed, rotation_max_factor, rotation_max_bits, hadamard_first, nli, "
                                   "residual_rotation, gram_stage2, affine_refit, group_size, clip_grid, ila_mean_bits, "
                                   "ila_bits, ila_beta, ila_windows, specquant, spec_smooth, spec_alpha, spec_eta, spec_k_max, "
                                   "tune_steps, tune_lr, tune_windows, tune_code_lr, billm_split, int4_linears)");
    }
}

/// The architecture of a model as "key=value" entries joined by ';' (saved models record it):
/// architecture, dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, head_dim,
/// norm_eps, rope_theta, rope (interleaved | rotate_half), qk_norm, attention_bias, n_experts,
/// n_experts_per_token, moe_hidden_dim, norm_topk_prob, bos_token, stop_token.
[[nodiscard]] inline std::string model_fields(const llama_model& m) {
    const auto& c = m.config;
    std::string s = "architecture=" + m.architecture;
    auto put = [&](const char* k, const std::string& v) { s += ";" + std::string(k) + "=" + v; };
    put("dim", std::to_string(c.dim));
    put("hidden_dim", std::to_string(c.hidden_dim));
    put("n_layers", std::to_string(c.n_layers));
    put("n_heads", std::to_string(c.n_heads));
    put("n_kv_heads", std::to_string(c.n_kv_heads));
    put("vocab_size", std::to_string(c.vocab_size));
    put("seq_len", std::to_string(c.seq_len));
    put("head_dim", std::to_string(c.head_size()));
    put("norm_eps", detail::real_text(c.norm_eps));
    put("rope_theta", detail::real_text(c.rope_theta));
    put("rope", c.rope == rope_layout::interleaved ? "interleaved" : "rotate_half");
    put("qk_norm", c.qk_norm ? "true" : "false");
    put("attention_bias", c.attention_bias ? "true" : "false");
    put("n_experts", std::to_string(c.n_experts));
    put("n_experts_per_token", std::to_string(c.n_experts_per_token));
    put("moe_hidden_dim", std::to_string(c.moe_hidden_dim));
    put("norm_topk_prob", c.norm_topk_prob ? "true" : "false");
    put("bos_token", std::to_string(c.bos_token));
    put("stop_token", std::to_string(c.stop_token));
    return s;
}

namespace detail {
/// Parses `model_fields` text: every key required, none unknown, sizes in range.
inline void parse_model_fields(std::string_view text, llama_model& m) {
    auto& c = m.config;
    std::map<std::string, std::string> f;
    try {
        const auto kv = split_fields(text, ';', "lowbit.model");
        f.insert(kv.begin(), kv.end());
    } catch (const invalid_argument& e) {
        throw format_error(std::string("lowbit: load_quantized_model: ") + e.what());
    }
    static const char* keys[] = {"architecture", "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                                 "seq_len", "head_dim", "norm_eps", "rope_theta", "rope", "qk_norm", "attention_bias",
                                 "n_experts", "n_experts_per_token", "moe_hidden_dim", "norm_topk_prob", "bos_token", "stop_token"};
    for (const char* k : keys)
        if (!f.count(k)) throw format_error(std::string("lowbit: load_quantized_model: lowbit.model lacks '") + k + "'");
    if (f.size() != std::size(keys)) throw format_error("lowbit: load_quantized_model: lowbit.model has unknown keys");
    try {
        auto size = [&](const char* k, long long lo) {
            const long long v = parse_integer(f[k], k);
            if (v < lo || v > (1LL << 24)) throw format_error(std::string("lowbit: load_quantized_model: lowbit.model ") + k + " out of range");
            return static_cast<int>(v);
        };
        m.architecture = f["architecture"];
        c.dim = size("dim", 1);
        c.hidden_dim = size("hidden_dim", 1);
        c.n_layers = size("n_layers", 1);
        c.n_heads = size("n_heads", 1);
        c.n_kv_heads = size("n_kv_heads", 1);
        c.vocab_size = size("vocab_size", 1);
        c.seq_len = size("seq_len", 2);
        c.head_dim = size("head_dim", 2);
        c.n_experts = size("n_experts", 0);
        c.n_experts_per_token = size("n_experts_per_token", 0);
        c.moe_hidden_dim = size("moe_hidden_dim", 0);
        c.norm_eps = static_cast<float>(parse_real(f["norm_eps"], "norm_eps"));
        c.rope_theta = static_cast<float>(parse_real(f["rope_theta"], "rope_theta"));
        const std::string& rope = f["rope"];
        if (rope != "interleaved" && rope != "rotate_half") throw format_error("lowbit: load_quantized_model: unknown rope layout '" + rope + "'");
        c.rope = rope == "interleaved" ? rope_layout::interleaved : rope_layout::rotate_half;
        c.qk_norm = parse_flag(f["qk_norm"], "qk_norm");
        c.attention_bias = parse_flag(f["attention_bias"], "attention_bias");
        c.norm_topk_prob = parse_flag(f["norm_topk_prob"], "norm_topk_prob");
        c.bos_token = static_cast<int>(parse_integer(f["bos_token"], "bos_token"));
        c.stop_token = static_cast<int>(parse_integer(f["stop_token"], "stop_token"));
    } catch (const invalid_argument& e) {
        throw format_error(std::string("lowbit: load_quantized_model: lowbit.model: ") + e.what());
    }
    if (c.n_heads % c.n_kv_heads != 0 || c.head_dim % 2 != 0 || c.n_experts_per_token > c.n_experts ||
        c.bos_token >= c.vocab_size || c.stop_token >= c.vocab_size)
        throw format_error("lowbit: load_quantized_model: lowbit.model is inconsistent");
}
} // namespace detail

namespace detail {

inline std::vector<std::byte> fp16_bytes(const vector_f& v) {
    std::vector<std::byte> out(static_cast<std::size_t>(v.size()) * 2);
    for (Eigen::Index i = 0; i < v.size(); ++i) {
        const Eigen::half h(v(i));
        std::memcpy(out.data() + 2 * i, &h, 2);
    }
    return out;
}

inline vector_f fp16_vector(const io::tensor_view& t, const std::string& name) {
    if (t.dtype != io::st_dtype::F16)
        throw format_error("lowbit: load_quantized_model: tensor '" + name + "' must be F16");
    vector_f v(static_cast<Eigen::Index>(t.numel()));
    for (Eigen::Index i = 0; i < v.size(); ++i) {
        Eigen::half h;
        std::memcpy(&h, t.bytes.data() + 2 * i, 2);
        v(i) = static_cast<float>(h);
    }
    return v;
}

inline std::string join_ints(std::initializer_list<long long> v) {
    std::string s;
    for (auto x : v) {
        if (!s.empty()) s += ',';
        s += std::to_string(x);
    }
    return s;
}

inline std::vector<long long> split_ints(const std::string& s, std::size_t n, const std::string& what) {
    std::vector<long long> out;
    std::size_t at = 0;
    while (at <= s.size() && out.size() < n + 1) {
        const auto next = s.find(',', at);
        const std::string part = s.substr(at, next == std::string::npos ? std::string::npos : next - at);
        try {
            std::size_t used = 0;
            out.push_back(std::stoll(part, &used));
            if (used != part.size()) throw std::invalid_argument(part);
        } catch (const std::exception&) {
            throw format_error("lowbit: load_quantized_model: metadata '" + what + "' is not a list of integers");
        }
        if (next == std::string::npos) break;
        at = next + 1;
    }
    if (out.size() != n)
        throw format_error("lowbit: load_quantized_model: metadata '" + what + "' needs " + std::to_string(n) + " integers");
    return out;
}

/// Why a linear's record is not what `r` produces, or "" when it is: the packed format of the
/// recipe's weight scheme (int4 → "int4", ternary → "ternary_base3" or "ternary2" by `base3`, binary
/// → "binary1", billm_binary → "salient_binary", tra_ternary → "salient_ternary"), or "dense" — always for fp32/mxfp4, and for a packed scheme only as a
/// counted fallback (`dense_bits` < 32, e.g. KBVQ's scalar-residual experts), or an expert format standing
/// for the scheme's packed format (moe_experts.hpp: "cejd_binary1" for binary, "kbvq_vq" for int4; expert
/// tensors only on such records); learned rotations only under a
/// learning rotation of the right kind (KOTMS/OKT: Kronecker factors, TORQ: dense); a low-rank term
/// only under `low_rank > 0`, of rank at most `low_rank`. The saver refuses such a record
/// (invalid_argument) and the loader such a file (format_error), so a saved model never runs as
/// something its recorded recipe does not make.
inline std::string record_recipe_mismatch(const recipe& r, const linear_record& rec) {
    std::string want;
    switch (r.weights) {
    case weight_scheme::fp32:
    case weight_scheme::mxfp4: want = "dense"; break;
    case weight_scheme::tra_ternary: want = "salient_ternary"; break;
    case weight_scheme::billm_binary: want = "salient_binary"; break;
    case weight_scheme::int4: want = r.group_size > 0 ? "int4_g" + std::to_string(r.group_size) : pack_format<int4>::name; break;
    case weight_scheme::absmean_ternary:
    case weight_scheme::e2m_atq: want = r.base3 ? pack_format<ternary_base3>::name : pack_format<ternary2>::name; break;
    case weight_scheme::sign_binary:
    case weight_scheme::arb_binary: want = pack_format<binary1>::name; break;
    }
    const bool fallback = (rec.format == "dense" && want != "dense" && rec.dense_bits < 32.0) ||
                          detail::expert_format_stands_for(rec.format, want);
    if (rec.format != want && !fallback)
        return "is stored as '" + rec.format + "', but recipe weights=" + name_of(r.weights, weight_scheme_names) +
               (want == "dense" ? "" : std::string(r.base3 ? ", base3=true" : ", base3=false")) + " stores '" + want + "'";
    if (!rec.expert.empty() && !detail::find_expert_format(rec.format))
        return "carries expert tensors, which format '" + rec.format + "' does not store";
    if (rec.rotation) {
        const bool kron = r.rotation == rotation_kind::kotms || r.rotation == rotation_kind::okt;
        if (rec.rotation->dense.size() > 0 ? r.rotation != rotation_kind::torq : !kron)
            return "carries a learned rotation that recipe rotation=" + std::string(name_of(r.rotation, rotation_names)) +
                   " does not learn";
    }
    const bool ila = r.ila_mean_bits > 0 && r.activation == activation_kind::int_symmetric;
    if (ila && rec.act_bits == 0)
        return "has no per-layer activation width, but recipe ila_mean_bits=" + real_text(r.ila_mean_bits) +
               " allocates one per block";
    if (ila && std::find(r.ila_bits.begin(), r.ila_bits.end(), rec.act_bits) == r.ila_bits.end())
        return "runs its activations at act_bits " + std::to_string(rec.act_bits) + ", not a candidate of recipe ila_bits";
    if (!ila && rec.act_bits != 0)
        return "carries a per-layer activation width (act_bits " + std::to_string(rec.act_bits) +
               ") that the recipe does not allocate (ila_mean_bits=0 or no int_symmetric activations)";
    if (!r.specquant && (rec.smoothing.size() || !rec.spectrum.empty()))
        return "carries SpecQuant smoothing factors or a spectrum, but the recipe has specquant=false";
    if (r.specquant && rec.smoothing.size() != (r.spec_smooth ? rec.cols : 0))
        return "stores " + std::to_string(rec.smoothing.size()) + " smoothing factors, recipe spec_smooth=" +
               (r.spec_smooth ? "true" : "false") + " needs " + std::to_string(r.spec_smooth ? rec.cols : 0);
    if (r.specquant && static_cast<Eigen::Index>(rec.spectrum.size()) != rec.rows)
        return "stores a spectrum of " + std::to_string(rec.spectrum.size()) + " rows, the layer has " + std::to_string(rec.rows);
    for (const auto& c : rec.spectrum)
        if (c.size() > rec.cols / 2 + 1 || (r.spec_k_max > 0 && c.size() > r.spec_k_max))
            return "keeps " + std::to_string(c.size()) + " frequencies in a row, more than cols/2 + 1 or recipe spec_k_max=" +
                   std::to_string(r.spec_k_max);
    if (rec.correction && (r.low_rank == 0 || rec.correction->rank() > r.low_rank))
        return "carries a rank-" + std::to_string(rec.correction->rank()) + " correction, recipe low_rank=" +
               std::to_string(r.low_rank);
    return {};
}
} // namespace detail

/// Writes a quantized model as safetensors (lowbit convention, docs/formats.md): F32
/// `token_embedding`, `classifier`, `rms_final`, `layers.L.rms_att`, `layers.L.rms_ffn` (and, where
/// the architecture has them, `layers.L.q_norm`/`k_norm`, `q_bias`/`k_bias`/`v_bias`, `router`);
/// per block linear `<name>.codes` (U8, packed bytes in the kernels' layout) with F16 `.scale` and
/// `.offset`, or F32 `.weight` for the dense format, F16 `.lowrank_a` / `.lowrank_b` and
/// `.rotation_*`, where <name> is `linear_id::name()` (`layers.L.wq`, `layers.L.experts.E.w1`);
/// the tokenizer file as U8 `tokenizer` when the model carries one. Metadata: `lowbit.version`,
/// `lowbit.recipe` (name), `lowbit.recipe_fields` (`recipe_fields`: every field, seed included),
/// `lowbit.model` (`model_fields`), `lowbit.tokenizer_format`, and `<name>.format` / `.shape` /
/// `.dense_bits`; expert formats add their own and shared F16 tensors (moe_experts.hpp: each shared
/// group once). Atomic (temporary file + rename): a failure leaves any previous file intact.
/// \throws invalid_argument (records do not match the model or the recipe — `detail::record_recipe_mismatch` —,
/// a shared tensor group not held by exactly its `shared_by` records, non-dense classifier), format_error (I/O).
template <class = void>
void save_quantized_model(const std::filesystem::path& path, const quantized_model& q) {
    constexpr const char* where = "save_quantized_model";
    const auto& m = q.model;
    io::safetensors_writer out;
    out.set_metadata("lowbit.version", detail::join_ints({LOWBIT_VERSION_MAJOR, LOWBIT_VERSION_MINOR, LOWBIT_VERSION_PATCH}));
    out.set_metadata("lowbit.recipe", q.spec.name);
    out.set_metadata("lowbit.recipe_fields", recipe_fields(q.spec));
    out.set_metadata("lowbit.model", model_fields(m));
    if (!q.tokenizer_format.empty()) {
        detail::require(q.tokenizer_format == "llama2c" || q.tokenizer_format == "hf-json", where,
                        "tokenizer_format must be 'llama2c' or 'hf-json'");
        out.set_metadata("lowbit.tokenizer_format", q.tokenizer_format);
        out.add("tokenizer", io::st_dtype::U8, {static_cast<std::uint64_t>(q.tokenizer_bytes.size())},
                std::as_bytes(std::span<const std::uint8_t>(q.tokenizer_bytes)));
    }
    out.add("token_embedding", m.token_embedding);
    out.add("classifier", detail::dense_weight_of(*m.classifier, where));
    out.add("rms_final", m.rms_final.transpose());
    std::size_t n_linears = 0;
    if (const std::string why = detail::expert_sharing_mismatch(q.records); !why.empty())
        throw invalid_argument(std::string("lowbit: save_quantized_model: ") + why);
    std::map<std::string, std::shared_ptr<const expert_tensor_map>> shared_written;
    for (std::size_t l = 0; l < m.blocks.size(); ++l) {
        const auto& b = m.blocks[l];
        const std::string p = "layers." + std::to_string(l) + ".";
        out.add(p + "rms_att", b.rms_att.transpose());
        out.add(p + "rms_ffn", b.rms_ffn.transpose());
        for (const auto& [key, v] : {std::pair<const char*, const vector_f*>{"q_norm", &b.q_norm}, {"k_norm", &b.k_norm},
                                     {"q_bias", &b.q_bias}, {"k_bias", &b.k_bias}, {"v_bias", &b.v_bias}})
            if (v->size()) out.add(p + key, v->transpose());
        if (b.is_moe()) out.add(p + "router", b.router);
        for (const linear_id& id : m.block_linears(static_cast<int>(l))) {
            const std::string n = id.name();
            const auto it = q.records.find(n);
            detail::require(it != q.records.end() && !it->second.format.empty(), where, "missing record for " + n);
            const auto& rec = it->second;
            if (const std::string why = detail::record_recipe_mismatch(detail::recipe_for_linear(q.spec, n), rec); !why.empty())
                throw invalid_argument(std::string("lowbit: save_quantized_model: record of '") + n + "' " + why);
            ++n_linears;
            out.set_metadata(n + ".format", rec.format);
            out.set_metadata(n + ".shape", detail::join_ints({rec.rows, rec.cols}));
            if (rec.format == "dense") {
                out.add(n + ".weight", rec.dense);
                out.set_metadata(n + ".dense_bits", detail::real_text(rec.dense_bits));
            } else {
                out.add(n + ".codes", io::st_dtype::U8, {static_cast<std::uint64_t>(rec.codes.size())},
                        std::as_bytes(std::span<const std::uint8_t>(rec.codes)));
                out.add(n + ".scale", io::st_dtype::F16, {static_cast<std::uint64_t>(rec.scale.size())},
                        detail::fp16_bytes(rec.scale));
                if (rec.offset.size())
                    out.add(n + ".offset", io::st_dtype::F16, {static_cast<std::uint64_t>(rec.offset.size())},
                            detail::fp16_bytes(rec.offset));
                detail::write_expert_tensors(out, n, rec.expert, shared_written);
            }
            auto add_f16_matrix = [&](const std::string& key, const matrix_f& x) {
                if (!x.size()) return;
                const vector_f v = Eigen::Map<const vector_f>(x.data(), x.size());
                out.add(n + key, io::st_dtype::F16,
                        {static_cast<std::uint64_t>(x.rows()), static_cast<std::uint64_t>(x.cols())}, detail::fp16_bytes(v));
            };
            if (!rec.rotation_status.empty()) out.set_metadata(n + ".rotation_status", rec.rotation_status);
            if (rec.act_bits != 0) out.set_metadata(n + ".act_bits", std::to_string(rec.act_bits));
            if (rec.rotation) { // learned rotation: F16 matrices
                add_f16_matrix(".rotation_left", rec.rotation->left);
                add_f16_matrix(".rotation_right", rec.rotation->right);
                add_f16_matrix(".rotation_dense", rec.rotation->dense);
            }
            if (rec.correction) {
                add_f16_matrix(".lowrank_a", rec.correction->a);
                add_f16_matrix(".lowrank_b", rec.correction->b);
            }
            if (rec.smoothing.size()) // SpecQuant λ
                out.add(n + ".smoothing", io::st_dtype::F16, {static_cast<std::uint64_t>(rec.smoothing.size())},
                        detail::fp16_bytes(rec.smoothing));
            if (!rec.spectrum.empty()) { // SpecQuant: K_i (U16) and the stored reals of every row (F16)
                std::vector<std::uint16_t> kept;
                std::vector<float> reals;
                const bool even = rec.cols % 2 == 0;
                for (const auto& c : rec.spectrum) {
                    kept.push_back(static_cast<std::uint16_t>(c.size()));
                    for (Eigen::Index f = 0; f < c.size(); ++f) {
                        reals.push_back(c(f).real());
                        if (f > 0 && !(even && f == rec.cols / 2)) reals.push_back(c(f).imag());
                    }
                }
                out.add(n + ".spectrum_kept", io::st_dtype::U16, {static_cast<std::uint64_t>(kept.size())},
                        std::as_bytes(std::span<const std::uint16_t>(kept)));
                out.add(n + ".spectrum", io::st_dtype::F16, {static_cast<std::uint64_t>(reals.size())},
                        detail::fp16_bytes(Eigen::Map<const vector_f>(reals.data(), static_cast<Eigen::Index>(reals.size()))));
            }
        }
    }
    detail::require(n_linears == q.records.size(), where,
                    "records hold " + std::to_string(q.records.size()) + " entries, the model has " +
                        std::to_string(n_linears) + " block linears");
    out.write(path);
}

/// Reads a model written by `save_quantized_model` and rebuilds it with `build_linear` (so its logits
/// are bit-identical to the saved model's): the recipe comes from `lowbit.recipe_fields` (every
/// field), never from the built-in table, so a non-default seed or flag reloads as saved.
/// \throws format_error (corrupt, truncated, inconsistent or not a lowbit quantized model; a recipe
/// field it does not know; a recorded recipe that would not produce the stored layers —
/// `detail::record_recipe_mismatch`: the file is refused rather than run as something else).
template <class = void>
[[nodiscard]] quantized_model load_quantized_model(const std::filesystem::path& path) {
    const auto f = io::safetensors_file::read(path);
    const auto& md = f.metadata();
    auto meta = [&](const std::string& k) -> const std::string& {
        auto it = md.find(k);
        if (it == md.end()) throw format_error("lowbit: load_quantized_model: metadata '" + k + "' is missing (file '" + path.string() + "')");
        return it->second;
    };
    auto tensor = [&](const std::string& n) {
        if (!f.contains(n)) throw format_error("lowbit: load_quantized_model: tensor '" + n + "' is missing (file '" + path.string() + "')");
        return f.tensor(n);
    };
    auto matrix = [&](const std::string& n) {
        (void)tensor(n);
        matrix_f x;
        try {
            x = f.matrix(n);
        } catch (const invalid_argument& e) {
            throw format_error(e.what());
        }
        if (!x.allFinite()) throw format_error("lowbit: load_quantized_model: '" + n + "' holds NaN or Inf");
        return x;
    };
    auto vec = [&](const std::string& n, Eigen::Index len) {
        const matrix_f x = matrix(n);
        if (x.rows() != 1 || x.cols() != len)
            throw format_error("lowbit: load_quantized_model: '" + n + "' must hold " + std::to_string(len) + " values");
        if (!x.allFinite()) throw format_error("lowbit: load_quantized_model: '" + n + "' holds NaN or Inf");
        return vector_f(x.row(0).transpose());
    };
    quantized_model q;
    q.spec.name = meta("lowbit.recipe");
    try {
        set_recipe_fields(q.spec, meta("lowbit.recipe_fields"));
        detail::check_recipe(q.spec);
    } catch (const invalid_argument& e) {
        throw format_error(std::string("lowbit: load_quantized_model: the recorded recipe cannot be rebuilt: ") + e.what());
    }
    for (const auto& r : builtin_recipes())
        if (r.name == q.spec.name) q.spec.description = r.description;
    auto& m = q.model;
    detail::parse_model_fields(meta("lowbit.model"), m);
    const auto& c = m.config;
    m.nonlinear = recipe_nonlinear_ops(q.spec);
    if (md.count("lowbit.tokenizer_format")) {
        q.tokenizer_format = meta("lowbit.tokenizer_format");
        if (q.tokenizer_format != "llama2c" && q.tokenizer_format != "hf-json")
            throw format_error("lowbit: load_quantized_model: unknown tokenizer_format '" + q.tokenizer_format + "'");
        const auto t = tensor("tokenizer");
        const auto* b = reinterpret_cast<const std::uint8_t*>(t.bytes.data());
        q.tokenizer_bytes.assign(b, b + t.bytes.size());
    }
    m.token_embedding = matrix("token_embedding");
    if (m.token_embedding.rows() != c.vocab_size || m.token_embedding.cols() != c.dim) // a file fault: format_error, not shape_error
        throw format_error("lowbit: load_quantized_model: token_embedding is " + std::to_string(m.token_embedding.rows()) + "x" +
                           std::to_string(m.token_embedding.cols()) + ", lowbit.model implies " + std::to_string(c.vocab_size) +
                           "x" + std::to_string(c.dim));
    {
        matrix_f cls = matrix("classifier");
        if (cls.rows() != c.vocab_size || cls.cols() != c.dim)
            throw format_error("lowbit: load_quantized_model: classifier shape disagrees with lowbit.model");
        m.classifier = make_linear(dense_linear(std::move(cls)));
    }
    m.rms_final = vec("rms_final", c.dim);
    m.blocks.resize(static_cast<std::size_t>(c.n_layers));
    std::map<std::string, std::pair<std::shared_ptr<const expert_tensor_map>, int>> shared_read;
    for (std::size_t l = 0; l < m.blocks.size(); ++l) {
        auto& b = m.blocks[l];
        const std::string p = "layers." + std::to_string(l) + ".";
        b.rms_att = vec(p + "rms_att", c.dim);
        b.rms_ffn = vec(p + "rms_ffn", c.dim);
        if (c.qk_norm) {
            b.q_norm = vec(p + "q_norm", c.head_size());
            b.k_norm = vec(p + "k_norm", c.head_size());
        }
        if (c.attention_bias) {
            b.q_bias = vec(p + "q_bias", c.q_dim());
            b.k_bias = vec(p + "k_bias", c.kv_dim());
            b.v_bias = vec(p + "v_bias", c.kv_dim());
        }
        if (f.contains(p + "router")) {
            if (c.n_experts < 1) throw format_error("lowbit: load_quantized_model: '" + p + "router' in a model without experts");
            b.router = matrix(p + "router");
            if (b.router.rows() != c.n_experts || b.router.cols() != c.dim)
                throw format_error("lowbit: load_quantized_model: '" + p + "router' shape disagrees with lowbit.model");
            b.experts.resize(static_cast<std::size_t>(c.n_experts));
        }
        // every linear of the block, in block_linears order (placeholders first, so ids resolve)
        std::vector<linear_id> ids;
        for (auto s : {linear_slot::wq, linear_slot::wk, linear_slot::wv, linear_slot::wo}) ids.push_back({static_cast<int>(l), s});
        if (b.is_moe()) {
            for (int e = 0; e < c.n_experts; ++e)
                for (auto s : {linear_slot::w1, linear_slot::w2, linear_slot::w3}) ids.push_back({static_cast<int>(l), s, e});
        } else {
            for (auto s : {linear_slot::w1, linear_slot::w2, linear_slot::w3}) ids.push_back({static_cast<int>(l), s});
        }
        for (const linear_id& id : ids) {
            const std::string n = id.name();
            linear_record& rec = q.records[n];
            rec.format = meta(n + ".format");
            const auto shape = detail::split_ints(meta(n + ".shape"), 2, n + ".shape");
            rec.rows = shape[0];
            rec.cols = shape[1];
            if (rec.format == "dense") {
                rec.dense = matrix(n + ".weight");
                rec.dense_bits = std::strtod(meta(n + ".dense_bits").c_str(), nullptr);
            } else {
                const auto codes = tensor(n + ".codes");
                if (codes.dtype != io::st_dtype::U8) throw format_error("lowbit: load_quantized_model: '" + n + ".codes' must be U8");
                const auto* cb = reinterpret_cast<const std::uint8_t*>(codes.bytes.data());
                rec.codes.assign(cb, cb + codes.bytes.size());
                rec.scale = detail::fp16_vector(tensor(n + ".scale"), n + ".scale");
                if (f.contains(n + ".offset")) rec.offset = detail::fp16_vector(tensor(n + ".offset"), n + ".offset");
                detail::read_expert_tensors(f, n, rec.expert, shared_read);
            }
            auto f16_matrix = [&](const std::string& key) {
                const auto t = tensor(n + key);
                if (t.shape.size() != 2)
                    throw format_error("lowbit: load_quantized_model: '" + n + key + "' must be a matrix");
                const vector_f v = detail::fp16_vector(t, n + key);
                if (!v.allFinite()) throw format_error("lowbit: load_quantized_model: '" + n + key + "' holds NaN or Inf");
                return matrix_f(Eigen::Map<const matrix_f>(v.data(), static_cast<Eigen::Index>(t.shape[0]),
                                                           static_cast<Eigen::Index>(t.shape[1])));
            };
            if (const auto st = md.find(n + ".rotation_status"); st != md.end()) rec.rotation_status = st->second;
            if (const auto ab = md.find(n + ".act_bits"); ab != md.end()) {
                const std::string& v = ab->second;
                const bool digit = v.size() == 1 && v[0] >= '2' && v[0] <= '8';
                if (!digit)
                    throw format_error("lowbit: load_quantized_model: '" + n + ".act_bits' = '" + v +
                                       "' is not an activation width in 2..8");
                rec.act_bits = v[0] - '0';
            }
            if (f.contains(n + ".rotation_dense")) {
                stored_rotation sr;
                sr.dense = f16_matrix(".rotation_dense");
                rec.rotation = std::move(sr);
            } else if (f.contains(n + ".rotation_left") || f.contains(n + ".rotation_right")) {
                stored_rotation sr;
                sr.left = f16_matrix(".rotation_left");
                sr.right = f16_matrix(".rotation_right");
                rec.rotation = std::move(sr);
            }
            if (f.contains(n + ".lowrank_a")) {
                low_rank lr;
                lr.a = f16_matrix(".lowrank_a");
                lr.b = f16_matrix(".lowrank_b");
                rec.correction = std::move(lr);
            }
            if (f.contains(n + ".smoothing")) {
                rec.smoothing = detail::fp16_vector(tensor(n + ".smoothing"), n + ".smoothing");
                if (rec.smoothing.size() != rec.cols || !rec.smoothing.allFinite() || !(rec.smoothing.array() > 0.0f).all())
                    throw format_error("lowbit: load_quantized_model: '" + n + ".smoothing' must hold " + std::to_string(rec.cols) +
                                       " finite positive values");
            }
            if (f.contains(n + ".spectrum_kept") || f.contains(n + ".spectrum")) {
                const auto kt = tensor(n + ".spectrum_kept");
                if (kt.dtype != io::st_dtype::U16 || static_cast<Eigen::Index>(kt.numel()) != rec.rows)
                    throw format_error("lowbit: load_quantized_model: '" + n + ".spectrum_kept' must be U16 with one entry per row");
                const vector_f reals = detail::fp16_vector(tensor(n + ".spectrum"), n + ".spectrum");
                if (!reals.allFinite()) throw format_error("lowbit: load_quantized_model: '" + n + ".spectrum' holds NaN or Inf");
                const bool even = rec.cols % 2 == 0;
                Eigen::Index at = 0;
                for (Eigen::Index i = 0; i < rec.rows; ++i) {
                    std::uint16_t k = 0;
                    std::memcpy(&k, kt.bytes.data() + 2 * i, 2);
                    if (k > rec.cols / 2 + 1)
                        throw format_error("lowbit: load_quantized_model: '" + n + ".spectrum_kept' keeps more than cols/2 + 1 frequencies");
                    Eigen::VectorXcf c(k);
                    for (Eigen::Index fr = 0; fr < k; ++fr) {
                        const bool single = fr == 0 || (even && fr == rec.cols / 2);
                        if (at + (single ? 1 : 2) > reals.size())
                            throw format_error("lowbit: load_quantized_model: '" + n + ".spectrum' holds fewer values than spectrum_kept needs");
                        const float re = reals(at++);
                        const float im = single ? 0.0f : reals(at++);
                        c(fr) = std::complex<float>(re, im);
                    }
                    rec.spectrum.push_back(std::move(c));
                }
                if (at != reals.size())
                    throw format_error("lowbit: load_quantized_model: '" + n + ".spectrum' holds more values than spectrum_kept needs");
            }
            // expected shape of this slot
            const Eigen::Index hid = id.expert >= 0 ? c.moe_hidden_dim : c.hidden_dim;
            Eigen::Index want_r = 0, want_c = 0;
            switch (id.slot) {
            case linear_slot::wq: want_r = c.q_dim(), want_c = c.dim; break;
            case linear_slot::wk:
            case linear_slot::wv: want_r = c.kv_dim(), want_c = c.dim; break;
            case linear_slot::wo: want_r = c.dim, want_c = c.q_dim(); break;
            case linear_slot::w1:
            case linear_slot::w3: want_r = hid, want_c = c.dim; break;
            case linear_slot::w2: want_r = c.dim, want_c = hid; break;
            }
            if (rec.rows != want_r || rec.cols != want_c)
                throw format_error("lowbit: load_quantized_model: '" + n + "' has shape " + std::to_string(rec.rows) + "x" +
                                   std::to_string(rec.cols) + ", lowbit.model implies " + std::to_string(want_r) + "x" +
                                   std::to_string(want_c));
            if (const std::string why = detail::record_recipe_mismatch(detail::recipe_for_linear(q.spec, n), rec); !why.empty())
                throw format_error("lowbit: load_quantized_model: the recorded recipe cannot be rebuilt: layer '" + n + "' " + why);
            std::shared_ptr<const linear_operator> op;
            try {
                op = build_linear(q.spec, rec, recipe_rotation(q.spec, rec.cols));
            } catch (const format_error&) {
                throw;
            } catch (const error& e) {
                throw format_error(std::string("lowbit: load_quantized_model: layer '") + n + "' is inconsistent: " + e.what());
            }
            if (id.expert >= 0)
                b.experts[static_cast<std::size_t>(id.expert)][static_cast<std::size_t>(expert_slot_index(id.slot))] = std::move(op);
            else
                b.linear[static_cast<std::size_t>(id.slot)] = std::move(op);
        }
    }
    if (const std::string why = detail::expert_sharing_mismatch(q.records); !why.empty())
        throw format_error("lowbit: load_quantized_model: " + why);
    return q;
}

// Separate instantiation (docs/compile_time.md): defined as `extern`, LOWBIT_MODEL_INSTANTIATION turns these
// into declarations; one translation unit of the program defines it empty after including this header's
// dependencies, and compiles them.
#ifdef LOWBIT_MODEL_INSTANTIATION
LOWBIT_MODEL_INSTANTIATION template std::shared_ptr<const linear_operator> build_linear<>(const recipe&, const linear_record&,
                                                                                   const std::optional<hadamard_transform>&);
LOWBIT_MODEL_INSTANTIATION template llama_model quantize_model<>(const llama_model&, const recipe&, std::span<const int>, const quantize_options&,
                                                        linear_records*);
LOWBIT_MODEL_INSTANTIATION template void save_quantized_model<>(const std::filesystem::path&, const quantized_model&);
LOWBIT_MODEL_INSTANTIATION template quantized_model load_quantized_model<>(const std::filesystem::path&);
#endif

LOWBIT_END_NAMESPACE
