# Sanitizer and fuzzing builds (options CARTSERVE_SANITIZE and CARTSERVE_FUZZ).
#
# CARTSERVE_SANITIZE: every target with ASan + UBSan; the first UBSan report
# aborts (no recovery), so a test that triggers one fails.
# CARTSERVE_FUZZ: the same plus libFuzzer's coverage instrumentation on every
# library (-fsanitize=fuzzer-no-link); the targets in tests/fuzz link the
# libFuzzer driver. Needs clang (Debian: clang, libclang-rt-dev).
if(CARTSERVE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "CARTSERVE_FUZZ needs clang: configure with "
                        "-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++")
  endif()
  set(CARTSERVE_SANITIZE ON)
endif()

if(CARTSERVE_SANITIZE)
  set(cs_san_flags -fsanitize=address,undefined -fno-sanitize-recover=all
                   -fno-omit-frame-pointer)
  # Out-of-range float -> int casts are UB; gcc leaves this check out of "undefined".
  list(APPEND cs_san_flags -fsanitize=float-cast-overflow)
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:${cs_san_flags}>")
  add_link_options(${cs_san_flags})
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # gcc 12 with ASan reports std::function inside libstdc++'s <regex> as
    # "may be used uninitialized" (a false positive; -Werror would stop the build).
    add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized>")
  endif()
  message(STATUS "cartserve: ASan + UBSan")
endif()

if(CARTSERVE_FUZZ)
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=fuzzer-no-link>")
  # CUDA and benchmarks are not part of a fuzzing build.
  set(CARTSERVE_CUDA OFF CACHE BOOL "" FORCE)
  set(CARTSERVE_BENCH OFF CACHE BOOL "" FORCE)
  message(STATUS "cartserve: libFuzzer targets (tests/fuzz)")
endif()
