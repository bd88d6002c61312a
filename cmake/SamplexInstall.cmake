# SPDX-License-Identifier: Apache-2.0
# Installs the libraries, headers, samplex.pc and a CMake package config.
include(CMakePackageConfigHelpers)

install(TARGETS samplex samplex_static EXPORT samplexTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/samplex DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

install(EXPORT samplexTargets NAMESPACE samplex::
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/samplex)
configure_package_config_file(cmake/samplexConfig.cmake.in
  ${CMAKE_BINARY_DIR}/samplexConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/samplex)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/samplexConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/samplexConfig.cmake ${CMAKE_BINARY_DIR}/samplexConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/samplex)

# samplex.pc is written at install time, so that the prefix it names is the
# one installed to (`cmake --install build --prefix DIR`), not the one
# configured.
install(CODE "
  set(SAMPLEX_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  set(CMAKE_INSTALL_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
  set(CMAKE_INSTALL_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
  set(PROJECT_VERSION \"${PROJECT_VERSION}\")
  configure_file(\"${PROJECT_SOURCE_DIR}/cmake/samplex.pc.in\" \"${PROJECT_BINARY_DIR}/samplex.pc\" @ONLY)
")
install(FILES ${PROJECT_BINARY_DIR}/samplex.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
