# Included before project() by `pip install .` (pyproject.toml sets
# CMAKE_PROJECT_INCLUDE_BEFORE to this file): EFFNET_ENABLE_CUDA defaults to ON only where nvcc
# exists (on PATH, or /usr/local/cuda/bin/nvcc), so that the package builds on machines without
# the CUDA toolkit. An explicit -C cmake.define.EFFNET_ENABLE_CUDA=ON|OFF wins.
if(NOT DEFINED EFFNET_ENABLE_CUDA)
  find_program(EFFNET_PY_NVCC nvcc HINTS /usr/local/cuda/bin)
  if(EFFNET_PY_NVCC OR DEFINED CMAKE_CUDA_COMPILER)
    set(EFFNET_ENABLE_CUDA ON CACHE BOOL "Build the CUDA engine (needs the CUDA toolkit, not a GPU)")
    if(NOT DEFINED CMAKE_CUDA_COMPILER AND EFFNET_PY_NVCC)
      set(CMAKE_CUDA_COMPILER "${EFFNET_PY_NVCC}" CACHE FILEPATH "CUDA compiler")
    endif()
  else()
    set(EFFNET_ENABLE_CUDA OFF CACHE BOOL "Build the CUDA engine (needs the CUDA toolkit, not a GPU)")
  endif()
  message(STATUS "effnet Python build: EFFNET_ENABLE_CUDA=${EFFNET_ENABLE_CUDA} (nvcc: ${EFFNET_PY_NVCC})")
endif()
