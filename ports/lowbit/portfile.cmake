# vcpkg overlay port for lowbit (header-only). Use: vcpkg install lowbit --overlay-ports=<repo>/ports
# It builds the checkout this port lives in; a registry port would use vcpkg_from_github instead.
set(VCPKG_BUILD_TYPE release) # header-only: one configuration is enough
set(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../..")

vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        -DLOWBIT_BUILD_TESTS=OFF
        -DLOWBIT_BUILD_BENCH=OFF
        -DLOWBIT_BUILD_EXAMPLES=OFF
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup() # CONFIG_PATH defaults to share/lowbit

file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/debug" "${CURRENT_PACKAGES_DIR}/share/doc")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
configure_file("${CMAKE_CURRENT_LIST_DIR}/usage" "${CURRENT_PACKAGES_DIR}/share/${PORT}/usage" COPYONLY)
