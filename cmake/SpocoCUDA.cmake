# Decide whether to build spoco._cuda from SPOCO_CUDA = AUTO | ON | OFF.
#   AUTO: build when check_language(CUDA) finds nvcc.
#   ON:   require nvcc (CI uses this so every .cu file compiles).
#   OFF:  never build.
# Default architectures (no GPU needed at build time; CUDA 13 supports >= sm_75):
#   80-real;86-real;89-real;90 unless CMAKE_CUDA_ARCHITECTURES or CUDAARCHS is set.
include(CheckLanguage)
macro(spoco_configure_cuda)
  set(SPOCO_BUILD_CUDA OFF)
  string(TOUPPER "${SPOCO_CUDA}" _spoco_cuda_mode)
  if(NOT _spoco_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
    message(FATAL_ERROR "SPOCO_CUDA must be AUTO, ON or OFF, got '${SPOCO_CUDA}'")
  endif()
  if(NOT _spoco_cuda_mode STREQUAL "OFF")
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
        set(CMAKE_CUDA_ARCHITECTURES "80-real;86-real;89-real;90")
      endif()
      enable_language(CUDA)
      set(CMAKE_CUDA_STANDARD 17)
      set(CMAKE_CUDA_STANDARD_REQUIRED ON)
      find_package(CUDAToolkit REQUIRED)
      set(SPOCO_BUILD_CUDA ON)
      message(STATUS "spoco: building _cuda for architectures ${CMAKE_CUDA_ARCHITECTURES}")
    elseif(_spoco_cuda_mode STREQUAL "ON")
      message(FATAL_ERROR "SPOCO_CUDA=ON but no CUDA compiler was found (set CUDACXX or PATH)")
    else()
      message(STATUS "spoco: no CUDA compiler found, building without _cuda")
    endif()
  endif()
endmacro()
