// ODR check, first TU: includes every public header (generated list) and calls into the second.
#include "all_headers.hpp"

#include <cstdio>

int odr_b_entry();

int main() {
    const int a = lowbit::version.major * 100 + lowbit::version.minor;
    const int b = odr_b_entry();
    if (a != b) {
        std::puts("ODR check: the two translation units disagree");
        return 1;
    }
    std::puts("ODR check: two translation units including every header linked into one program");
    return 0;
}
