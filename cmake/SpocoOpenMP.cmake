# OpenMP is optional: without it every kernel runs on one thread.
find_package(OpenMP COMPONENTS CXX)
function(spoco_link_openmp target)
  if(OpenMP_CXX_FOUND)
    target_link_libraries(${target} PRIVATE OpenMP::OpenMP_CXX)
    target_compile_definitions(${target} PRIVATE SPOCO_HAVE_OPENMP=1)
  endif()
endfunction()
