# A Debian package of the installed tree (library, headers, CMake package files, programs):
#   cmake --build build && cpack --config build/CPackConfig.cmake -B build/package
# gives build/package/effnet_<version>_<arch>.deb, installed under /usr. The CUDA libraries the
# programs load (cuBLAS, cuBLASLt; the CUDA runtime is linked statically) come from the CUDA
# toolkit under /usr/local/cuda, which no Debian package provides: the package does not declare
# them, and says so in its description. tools/test_package.sh installs it and builds the
# out-of-tree consumer against it.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME effnet)
set(CPACK_PACKAGE_VENDOR "effnet")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "effnet developers <effnet@localhost>")
set(CPACK_DEBIAN_PACKAGE_SECTION science)
# Runtime: what the programs and the static library's link interface need from Debian.
# libjpeg-turbo: the static library decodes JPEG with it, so its consumers link it (the -dev
# package: find_dependency(JPEG) in effnetConfig.cmake). Debian names first, then Ubuntu's.
set(effnet_deb_depends "libc6, libgomp1, libstdc++6, libjpeg62-turbo-dev | libjpeg-turbo8-dev")
if(EFFNET_DEB_EXTRA_DEPENDS)
  string(APPEND effnet_deb_depends ", ${EFFNET_DEB_EXTRA_DEPENDS}")
endif()
set(CPACK_DEBIAN_PACKAGE_DEPENDS "${effnet_deb_depends}")
# Building against it (find_package(effnet)) needs a compiler and CMake.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "cmake (>= 3.24), g++")
if(EFFNET_ENABLE_CUDA)
  set(effnet_deb_cuda_note
      " Built with CUDA: the programs and the library need the CUDA 13 toolkit's cuBLAS / cuBLASLt\n under /usr/local/cuda (not a Debian package) and an NVIDIA driver to use a GPU.")
else()
  set(effnet_deb_cuda_note " Built without CUDA: the CPU engine only.")
endif()
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "EfficientNet B0-B7 / Lite0-4 inference and training in C++ and CUDA")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "effnet: static library, headers, CMake package (find_package(effnet)) and the\n programs effnet-classify, effnet-run, effnet-train, effnet-bench.\n${effnet_deb_cuda_note}")
include(CPack)
