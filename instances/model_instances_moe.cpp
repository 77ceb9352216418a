// Compiles the MoE and RWKV pipelines' entry points for lowbit_model_instances (see CMakeLists.txt).
// Everything they include from the other two sources is included first, as declarations.
#include <lowbit/model/backward.hpp> // declarations only (LOWBIT_MODEL_INSTANTIATION=extern)
#include <lowbit/model/checkpoint.hpp>
#include <lowbit/model/recipes.hpp>

#undef LOWBIT_MODEL_INSTANTIATION
#define LOWBIT_MODEL_INSTANTIATION // empty: definitions from here on
#include <lowbit/model/kbvq_moe.hpp>
#include <lowbit/model/mobie.hpp>
#include <lowbit/model/moe_recipes.hpp>
#include <lowbit/model/rwkv_quant.hpp>
