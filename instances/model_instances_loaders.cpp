// Compiles the entry points of the model loaders and writers (Hugging Face, GGUF, open_model) and of
// the reverse pass for lowbit_model_instances (see CMakeLists.txt). recipes.hpp's are another source's.
// BEGIN docs/compile_time.md
#include <lowbit/model/recipes.hpp> // declarations only (LOWBIT_MODEL_INSTANTIATION=extern)
#undef LOWBIT_MODEL_INSTANTIATION
#define LOWBIT_MODEL_INSTANTIATION // empty: definitions from here on
#include <lowbit/model/backward.hpp>
#include <lowbit/model/checkpoint.hpp>
#include <lowbit/model/gguf_model.hpp>
#include <lowbit/model/hf_model.hpp>
// END docs/compile_time.md
