// Compiles the entry points of lowbit/model/recipes.hpp for lowbit_model_instances (see CMakeLists.txt).
#undef LOWBIT_MODEL_INSTANTIATION
#define LOWBIT_MODEL_INSTANTIATION // empty: the headers' instantiation lines become definitions
#include <lowbit/model/recipes.hpp>
