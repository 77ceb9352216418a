#!/usr/bin/env python3
"""Static checks of the vcpkg overlay port and the Conan 2 recipe (neither tool installs on Debian).

- ports/lowbit/vcpkg.json parses, names lowbit, its version equals include/lowbit/version.hpp, it
  depends on eigen3 and xsimd and the vcpkg-cmake host helpers;
- portfile.cmake calls the header-only sequence (configure with tests off, install, config fixup,
  copyright) and the usage file shows find_package + lowbit::lowbit;
- conanfile.py and test_package/conanfile.py parse as Python (ast), declare a header-library with
  the right requirements, and test_package/CMakeLists.txt is the CMake consumer CTest builds.
"""
import ast
import json
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


ver_text = (root / "include/lowbit/version.hpp").read_text()
version = ".".join(re.search(rf"#define LOWBIT_VERSION_{p} (\d+)", ver_text).group(1)
                   for p in ("MAJOR", "MINOR", "PATCH"))

port = root / "ports/lowbit"
manifest = json.loads((port / "vcpkg.json").read_text())
check(manifest.get("name") == "lowbit", "vcpkg.json: name must be lowbit")
check(manifest.get("version") == version, f"vcpkg.json: version {manifest.get('version')} != {version}")
deps = [d if isinstance(d, str) else d.get("name") for d in manifest.get("dependencies", [])]
for d in ("eigen3", "xsimd", "vcpkg-cmake", "vcpkg-cmake-config"):
    check(d in deps, f"vcpkg.json: missing dependency {d}")
portfile = (port / "portfile.cmake").read_text()
for call in ("vcpkg_cmake_configure", "-DLOWBIT_BUILD_TESTS=OFF", "vcpkg_cmake_install",
             "vcpkg_cmake_config_fixup", "vcpkg_install_copyright", "usage"):
    check(call in portfile, f"portfile.cmake: missing {call}")
usage = (port / "usage").read_text()
check("find_package(lowbit CONFIG REQUIRED)" in usage and "lowbit::lowbit" in usage,
      "usage: must show find_package(lowbit CONFIG REQUIRED) and lowbit::lowbit")

recipe = ast.parse((root / "conanfile.py").read_text())
strings = {n.value for n in ast.walk(recipe) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
for s in ("header-library", "lowbit::lowbit", "lowbit", "eigen::eigen", "xsimd::xsimd"):
    check(s in strings, f"conanfile.py: expected the string {s!r}")
methods = {n.name for n in ast.walk(recipe) if isinstance(n, ast.FunctionDef)}
for m in ("set_version", "requirements", "validate", "package_id", "package", "package_info"):
    check(m in methods, f"conanfile.py: missing method {m}()")
tp = ast.parse((root / "test_package/conanfile.py").read_text())
tp_methods = {n.name for n in ast.walk(tp) if isinstance(n, ast.FunctionDef)}
for m in ("requirements", "build", "test"):
    check(m in tp_methods, f"test_package/conanfile.py: missing method {m}()")
cml = (root / "test_package/CMakeLists.txt").read_text()
check("find_package(lowbit CONFIG REQUIRED)" in cml and "lowbit::lowbit" in cml,
      "test_package/CMakeLists.txt: must find_package(lowbit CONFIG REQUIRED) and link lowbit::lowbit")
ctest_cml = (root / "tests/CMakeLists.txt").read_text()
check("test_package" in (root / "tests/package/install_and_consume.cmake").read_text(),
      "CTest's package test must build test_package/ (one consumer for CTest, vcpkg and Conan)")
check("install_and_consume.cmake" in ctest_cml, "tests/CMakeLists.txt must register the package test")

if errors:
    print("\n".join("recipe check FAILED: " + e for e in errors))
    sys.exit(1)
print(f"recipes ok: vcpkg port and Conan recipe for lowbit {version}")
