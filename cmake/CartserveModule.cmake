# Our own targets build with warnings as errors; third-party headers come in
# as SYSTEM includes so their warnings do not count.
function(cartserve_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -Wno-missing-field-initializers>)
endfunction()

# cartserve_module(NAME [DIRS d1 d2 ...] [DEPS ...])
# One static library cs_NAME from every .cpp in the listed folders (default:
# the current one). Includes are rooted at src/ ("core/status.h").
function(cartserve_module name)
  cmake_parse_arguments(M "" "" "DIRS;DEPS" ${ARGN})
  if(NOT M_DIRS)
    set(M_DIRS ".")
  endif()
  set(srcs)
  foreach(d ${M_DIRS})
    file(GLOB found CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/${d}/*.cpp")
    list(APPEND srcs ${found})
  endforeach()
  if(NOT srcs)  # a module with no sources yet is header-only
    add_library(cs_${name} INTERFACE)
    target_include_directories(cs_${name} INTERFACE "${PROJECT_SOURCE_DIR}/src")
    target_link_libraries(cs_${name} INTERFACE ${M_DEPS})
    return()
  endif()
  add_library(cs_${name} STATIC ${srcs})
  target_include_directories(cs_${name} PUBLIC "${PROJECT_SOURCE_DIR}/src")
  target_link_libraries(cs_${name} PUBLIC ${M_DEPS})
  set_target_properties(cs_${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  cartserve_warnings(cs_${name})
endfunction()

# Test code is not the product: it compiles at -Og (about half the compile time
# of -O3 for gtest-heavy files) while the code under test keeps the build
# type's flags in its libraries. Debug builds keep -O0.
function(cartserve_test_code target)
  target_compile_options(${target} PRIVATE
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<NOT:$<CONFIG:Debug>>>:-Og>)
endfunction()
