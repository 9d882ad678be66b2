# Shared build settings for every CCAL target.

add_library(ccal_options INTERFACE)
target_compile_options(ccal_options INTERFACE -Wall -Wextra -Wshadow -Wnon-virtual-dtor
                                              -Wno-unused-parameter)
# Asio/Beast and Botan headers are system headers; their warnings are not ours.
if(CCAL_SANITIZE)
  target_compile_options(ccal_options INTERFACE -fsanitize=address,undefined
                                                -fno-sanitize-recover=undefined
                                                -fno-omit-frame-pointer)
  target_link_options(ccal_options INTERFACE -fsanitize=address,undefined)
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    # clang 14's function sanitizer (part of `undefined`) fails on coroutines
    # ("Cannot represent a difference across sections", flows/builtin_flows.cpp).
    target_compile_options(ccal_options INTERFACE -fno-sanitize=function)
  endif()
endif()
if(CCAL_FUZZ)
  # Instrument everything for coverage; only fuzz targets link the fuzzer main.
  target_compile_options(ccal_options INTERFACE -fsanitize=fuzzer-no-link)
endif()

# ccal_add_tests(<module> <sources...> LIBS <libs...>)
# Builds one doctest binary per module from the unit tests that live beside
# the code (foo_test.cpp beside foo.cpp) and registers one CTest test per
# source file, so the CTest summary names the unit that failed.
function(ccal_add_tests module)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  set(exe ${module}_tests)
  add_executable(${exe} ${CMAKE_SOURCE_DIR}/test/doctest_main.cpp ${ARG_SOURCES})
  target_link_libraries(${exe} PRIVATE ${ARG_LIBS} doctest::doctest ccal_options)
  target_compile_definitions(${exe} PRIVATE CCAL_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  foreach(src ${ARG_SOURCES})
    get_filename_component(unit ${src} NAME_WE)
    add_test(NAME ${module}.${unit}
             COMMAND ${exe} --source-file=*${unit}.cpp --no-intro --duration=false)
    set_tests_properties(${module}.${unit} PROPERTIES LABELS "unit;${module};${ARG_LABELS}"
                         TIMEOUT 600)
  endforeach()
endfunction()
