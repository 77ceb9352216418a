# Finds lowbit's dependencies the way both the build tree and the installed package need them.
#
# - Eigen3 and xsimd are found WITHOUT a version: their version files reject cross-major
#   requests (Debian's Eigen 3.4.0 rejects "3.4...5", xsimd's SameMajorVersion rejects 8.1 from
#   "8.1...<15"), while vcpkg ships Eigen 5 and xsimd 14. The minimum versions are checked here.
# - Debian's libxsimd-dev 8.1.0 exports INTERFACE_LINK_LIBRARIES "xtl" without finding xtl, so a
#   consumer link fails with "cannot find -lxtl". If no xtl target exists, an empty stub is made.
include(CMakeFindDependencyMacro)

# Inside find_package(lowbit) use find_dependency (which reports through lowbit_FOUND); in
# lowbit's own build a missing dependency is a hard error.
macro(_lowbit_find_dependency)
  if(CMAKE_FIND_PACKAGE_NAME STREQUAL "lowbit")
    find_dependency(${ARGN})
  else()
    find_package(${ARGN} REQUIRED)
  endif()
endmacro()

if(NOT TARGET xtl)
  find_package(xtl QUIET CONFIG)
  if(NOT TARGET xtl)
    add_library(xtl INTERFACE IMPORTED)
  endif()
endif()

if(NOT TARGET Eigen3::Eigen)
  _lowbit_find_dependency(Eigen3 NO_MODULE)
endif()
if(NOT TARGET xsimd)
  _lowbit_find_dependency(xsimd)
endif()

set(_lowbit_eigen_version "${Eigen3_VERSION}")
if(NOT _lowbit_eigen_version AND DEFINED EIGEN3_VERSION_STRING)
  set(_lowbit_eigen_version "${EIGEN3_VERSION_STRING}")
endif()
if(_lowbit_eigen_version AND _lowbit_eigen_version VERSION_LESS 3.4)
  message(FATAL_ERROR "lowbit needs Eigen >= 3.4, found ${_lowbit_eigen_version}")
endif()
if(xsimd_VERSION AND xsimd_VERSION VERSION_LESS 8.1)
  message(FATAL_ERROR "lowbit needs xsimd >= 8.1, found ${xsimd_VERSION}")
endif()
unset(_lowbit_eigen_version)
