# Finds lowbit's dependencies the way both the build tree and the installed package need them.
#
# - Eigen3 and xsimd are found WITHOUT a version: their version files reject cross-major
#   requests (Debian's Eigen 3.4.0 rejects "3.4...5", xsimd's SameMajorVersion rejects 8.1 from
#   "8.1...<15"), while vcpkg ships Eigen 5 and xsimd 14. The minimum versions are checked here.
# - Debian's libxsimd-dev 8.1.0 exports INTERFACE_LINK_LIBRARIES "xtl" without finding xtl, so a
#   consumer link fails with "cannot find -lxtl". If xtl cannot be found, "xtl" is removed from
#   xsimd's link interface (no stub target is created).
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

if(NOT TARGET Eigen3::Eigen)
  _lowbit_find_dependency(Eigen3 NO_MODULE)
endif()
# LOWBIT_XSIMD_INCLUDE_DIR: a folder holding xsimd/xsimd.hpp to use instead of find_package(xsimd),
# e.g. the xsimd 13/14 headers shipped in PyPI's pythran wheels (scripts/test-xsimd). The version is
# read from xsimd/config/xsimd_config.hpp.
if(LOWBIT_XSIMD_INCLUDE_DIR AND NOT TARGET xsimd)
  if(NOT EXISTS "${LOWBIT_XSIMD_INCLUDE_DIR}/xsimd/xsimd.hpp")
    message(FATAL_ERROR "LOWBIT_XSIMD_INCLUDE_DIR=${LOWBIT_XSIMD_INCLUDE_DIR} holds no xsimd/xsimd.hpp")
  endif()
  file(STRINGS "${LOWBIT_XSIMD_INCLUDE_DIR}/xsimd/config/xsimd_config.hpp" _lowbit_xsimd_lines
       REGEX "#define XSIMD_VERSION_(MAJOR|MINOR|PATCH) ")
  set(xsimd_VERSION "")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX MATCH "XSIMD_VERSION_${_part} ([0-9]+)" _ "${_lowbit_xsimd_lines}")
    list(APPEND xsimd_VERSION "${CMAKE_MATCH_1}")
  endforeach()
  list(JOIN xsimd_VERSION "." xsimd_VERSION)
  add_library(xsimd INTERFACE IMPORTED)
  set_target_properties(xsimd PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${LOWBIT_XSIMD_INCLUDE_DIR}")
  unset(_lowbit_xsimd_lines)
  if(NOT CMAKE_FIND_PACKAGE_NAME STREQUAL "lowbit")
    message(STATUS "lowbit: xsimd ${xsimd_VERSION} from ${LOWBIT_XSIMD_INCLUDE_DIR}")
  endif()
endif()
if(NOT TARGET xsimd)
  _lowbit_find_dependency(xsimd)
endif()

# Debian's xsimd 8.1 links a target "xtl" that it never finds. Find xtl if it is installed; otherwise
# drop the dangling name from xsimd's link interface (xtl is header-only and only used by xsimd's
# optional xtl::xcomplex support). No target of ours or of anyone else's name is created.
if(TARGET xsimd)
  get_target_property(_lowbit_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
  if(_lowbit_xsimd_links AND "xtl" IN_LIST _lowbit_xsimd_links AND NOT TARGET xtl)
    find_package(xtl QUIET CONFIG)
    if(NOT TARGET xtl)
      list(REMOVE_ITEM _lowbit_xsimd_links xtl)
      set_property(TARGET xsimd PROPERTY INTERFACE_LINK_LIBRARIES "${_lowbit_xsimd_links}")
    endif()
  endif()
  unset(_lowbit_xsimd_links)
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
