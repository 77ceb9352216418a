"""Conan 2 recipe for lowbit, a header-only C++20 library.

    conan create . --build=missing                      # Eigen and xsimd from a Conan remote
    conan create . -pr:a <profile with [platform_requires] eigen/3.4.0 xsimd/8.1.0>   # from the system

The package is what lowbit's own CMake install produces (headers, share/lowbit/lowbitConfig.cmake
and friends, share/pkgconfig/lowbit.pc); consumers find it through that config file
(`find_package(lowbit CONFIG REQUIRED)`, target `lowbit::lowbit`), which finds Eigen3 and xsimd
itself: through the files CMakeDeps writes for the Conan packages, or the system's for
`[platform_requires]`. scripts/test-conan runs the offline variant (CTest label package-conan)."""
import os
import re

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeToolchain, cmake_layout
from conan.tools.files import load


class LowbitConan(ConanFile):
    name = "lowbit"
    description = ("Header-only C++20 low-bit quantization math for LLMs: quantizers, orthogonal "
                   "transforms, piecewise-linear fitting, bit-packed GEMM")
    license = "MIT"
    topics = ("quantization", "llm", "simd", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    exports_sources = "include/*", "cmake/*", "CMakeLists.txt", "LICENSE"
    no_copy_source = True

    def set_version(self):
        text = load(self, os.path.join(self.recipe_folder, "include", "lowbit", "version.hpp"))
        parts = [re.search(rf"#define LOWBIT_VERSION_{p} (\d+)", text).group(1)
                 for p in ("MAJOR", "MINOR", "PATCH")]
        self.version = ".".join(parts)

    def layout(self):
        cmake_layout(self)

    def requirements(self):
        # Header-only: dependencies of public headers are transitive. Ranges, so that the system's
        # Eigen 3.4 / xsimd 8.1 satisfy them as [platform_requires] (and vcpkg-era 13/14 too).
        self.requires("eigen/[>=3.4 <6]")
        self.requires("xsimd/[>=8.1 <15]")

    def validate(self):
        check_min_cppstd(self, 20)

    def package_id(self):
        self.info.clear()

    def generate(self):
        tc = CMakeToolchain(self)
        tc.cache_variables["LOWBIT_BUILD_TESTS"] = False
        tc.cache_variables["LOWBIT_BUILD_BENCH"] = False
        tc.cache_variables["LOWBIT_BUILD_EXAMPLES"] = False
        tc.cache_variables["LOWBIT_INSTALL"] = True
        tc.generate()

    def build(self):
        pass  # header-only: package() runs CMake's install rules

    def package(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.install()
        lic = os.path.join(self.package_folder, "licenses")
        os.makedirs(lic, exist_ok=True)
        with open(os.path.join(self.source_folder, "LICENSE"), encoding="utf-8") as f, \
                open(os.path.join(lic, "LICENSE"), "w", encoding="utf-8") as g:
            g.write(f.read())

    def package_info(self):
        # Consumers use lowbit's own installed config (share/lowbit), not a generated one.
        self.cpp_info.set_property("cmake_find_mode", "none")
        self.cpp_info.set_property("cmake_file_name", "lowbit")
        self.cpp_info.set_property("cmake_target_name", "lowbit::lowbit")
        self.cpp_info.set_property("pkg_config_name", "lowbit")
        self.cpp_info.builddirs = [""]  # on CMAKE_PREFIX_PATH: find_package finds share/lowbit/
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.requires = ["eigen::eigen", "xsimd::xsimd"]
