# Emulates what vcpkg (vcpkg_cmake_configure/install/config_fixup) and Conan do with lowbit:
# configure Release with tests off, install to a staging prefix, check the installed tree
# (only include/lowbit/**, share/lowbit/*.cmake and the licence; no absolute paths), MOVE the
# prefix, then configure, build and run test_package/ against the moved prefix.
# Usage: cmake -DSOURCE_DIR=.. -DWORK_DIR=.. -DGENERATOR=.. -DCXX=.. -P install_and_consume.cmake
foreach(v SOURCE_DIR WORK_DIR GENERATOR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "missing -D${v}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()

set(stage ${WORK_DIR}/stage)
run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_CXX_COMPILER=${CXX} -DLOWBIT_BUILD_TESTS=OFF -DLOWBIT_BUILD_BENCH=OFF -DLOWBIT_BUILD_EXAMPLES=OFF
    -DCMAKE_INSTALL_PREFIX=${stage})
run(${CMAKE_COMMAND} --install ${WORK_DIR}/build)

# The installed tree: headers, config files, licence; nothing else (no lib/, no bin/).
file(GLOB_RECURSE installed RELATIVE ${stage} ${stage}/*)
set(headers 0)
foreach(f IN LISTS installed)
  if(f MATCHES "^include/lowbit/.*\\.hpp$")
    math(EXPR headers "${headers}+1")
  elseif(f MATCHES "^share/lowbit/[A-Za-z]+\\.cmake$" OR f STREQUAL "share/doc/lowbit/LICENSE")
  else()
    message(FATAL_ERROR "unexpected file in the installed tree: ${f}")
  endif()
endforeach()
if(headers EQUAL 0 OR NOT EXISTS ${stage}/include/lowbit/ternary.hpp)
  message(FATAL_ERROR "installed tree lacks include/lowbit/ternary.hpp")
endif()
foreach(cfg lowbitConfig.cmake lowbitConfigVersion.cmake lowbitTargets.cmake lowbitDependencies.cmake)
  if(NOT EXISTS ${stage}/share/lowbit/${cfg})
    message(FATAL_ERROR "installed tree lacks share/lowbit/${cfg}")
  endif()
endforeach()
file(GLOB cmake_files ${stage}/share/lowbit/*.cmake)
foreach(f IN LISTS cmake_files)
  file(READ ${f} text)
  foreach(bad "${stage}" "${SOURCE_DIR}" "${WORK_DIR}")
    string(FIND "${text}" "${bad}" pos)
    if(NOT pos EQUAL -1)
      message(FATAL_ERROR "absolute path '${bad}' in installed ${f}")
    endif()
  endforeach()
endforeach()

# Move the prefix: a relocatable package must still work.
set(moved ${WORK_DIR}/moved-prefix)
file(RENAME ${stage} ${moved})
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/test_package -B ${WORK_DIR}/consumer -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${moved})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer)
run(${WORK_DIR}/consumer/consumer)
message(STATUS "installed ${headers} headers; consumer built and ran against the moved prefix ${moved}")
