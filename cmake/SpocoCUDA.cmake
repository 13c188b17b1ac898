# Decide whether to build spoco._cuda from SPOCO_CUDA = AUTO | ON | OFF.
#   AUTO: build when nvcc is found AND a GPU is visible (nvidia-smi lists one, or the
#         Linux driver reports one): the module is only of use there, and compiling it
#         for four architectures triples the install time and adds ~10 MB.
#   ON:   require nvcc and build, GPU or not (CI uses this so every .cu file compiles;
#         also for building on a login node without a GPU for a GPU cluster).
#   OFF:  never build.
# Default architectures (no GPU needed at build time; CUDA 13 supports >= sm_75):
#   80-real;86-real;89-real;90 unless CMAKE_CUDA_ARCHITECTURES or CUDAARCHS is set.
include(CheckLanguage)

# Sets <out> to TRUE when an NVIDIA GPU is visible to this machine.
function(spoco_gpu_visible out)
  set(_found FALSE)
  find_program(_spoco_nvidia_smi nvidia-smi)
  if(_spoco_nvidia_smi)
    execute_process(COMMAND "${_spoco_nvidia_smi}" -L OUTPUT_VARIABLE _list RESULT_VARIABLE _rc
                    ERROR_QUIET TIMEOUT 20)
    if(_rc EQUAL 0 AND _list MATCHES "GPU [0-9]+:")
      set(_found TRUE)
    endif()
  endif()
  if(NOT _found AND EXISTS "/proc/driver/nvidia/gpus")
    file(GLOB _gpus "/proc/driver/nvidia/gpus/*")
    if(_gpus)
      set(_found TRUE)
    endif()
  endif()
  set(${out} ${_found} PARENT_SCOPE)
endfunction()
macro(spoco_configure_cuda)
  set(SPOCO_BUILD_CUDA OFF)
  string(TOUPPER "${SPOCO_CUDA}" _spoco_cuda_mode)
  if(NOT _spoco_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
    message(FATAL_ERROR "SPOCO_CUDA must be AUTO, ON or OFF, got '${SPOCO_CUDA}'")
  endif()
  if(_spoco_cuda_mode STREQUAL "AUTO")
    spoco_gpu_visible(_spoco_gpu)
    if(NOT _spoco_gpu)
      message(STATUS "spoco: no GPU visible, building without _cuda (SPOCO_CUDA=ON builds it anyway)")
      set(_spoco_cuda_mode "OFF")
    endif()
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
