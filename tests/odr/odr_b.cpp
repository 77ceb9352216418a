// ODR check, second TU: includes every public header again; a non-inline definition in any
// header becomes a multiple-definition link error.
#include "all_headers.hpp"

int odr_b_entry() { return lowbit::version.major * 100 + lowbit::version.minor; }
