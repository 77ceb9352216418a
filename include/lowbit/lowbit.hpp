#pragma once
/// \file lowbit.hpp
/// Umbrella header: every maths header of lowbit (core, quantizers, solvers, transforms, NLI, kernels).
/// It does not include the file formats (lowbit/io/) nor the model layer (lowbit/model/), and it is
/// the most expensive maths header to compile (the union of all of them): an engine that only runs
/// packed layers should include what it uses, e.g. <lowbit/gemm.hpp>, <lowbit/hadamard.hpp>,
/// <lowbit/quantized_linear.hpp> (docs/compile_time.md has the figures).
/// The structure test `umbrella_header` checks that this list names every lowbit/*.hpp.

#include <lowbit/activations.hpp>
#include <lowbit/asym_ternary.hpp>
#include <lowbit/billm.hpp>
#include <lowbit/binary.hpp>
#include <lowbit/bit_allocation.hpp>
#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gemm.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/granularity.hpp>
#include <lowbit/hadamard.hpp>
#include <lowbit/kotms.hpp>
#include <lowbit/kronecker.hpp>
#include <lowbit/lowrank.hpp>
#include <lowbit/metrics.hpp>
#include <lowbit/moe.hpp>
#include <lowbit/mxfp.hpp>
#include <lowbit/okt.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/orthogonal_fit.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/pcdvq.hpp>
#include <lowbit/pwl.hpp>
#include <lowbit/pwl_fit.hpp>
#include <lowbit/quantized_linear.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/rwkv_proxy.hpp>
#include <lowbit/salient_binary.hpp>
#include <lowbit/salient_ternary.hpp>
#include <lowbit/specquant.hpp>
#include <lowbit/ternary.hpp>
#include <lowbit/thread_pool.hpp>
#include <lowbit/torq.hpp>
#include <lowbit/types.hpp>
#include <lowbit/version.hpp>
#include <lowbit/vq.hpp>
