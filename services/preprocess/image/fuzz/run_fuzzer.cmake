# Runs the image decoder fuzzer for a bounded time: cmake -DFUZZER=... -DCORPUS=... -DSEEDS=...
# -DFORMAT=jpeg|png|webp|any -P run_fuzzer.cmake. Seeds are the generated fixtures of FORMAT.
file(REMOVE_RECURSE ${CORPUS})
file(MAKE_DIRECTORY ${CORPUS})
set(patterns)
if(FORMAT STREQUAL "jpeg")
  set(patterns ${SEEDS}/*.jpg)
elseif(FORMAT STREQUAL "png")
  set(patterns ${SEEDS}/*.png)
elseif(FORMAT STREQUAL "webp")
  set(patterns ${SEEDS}/*.webp)
endif()
if(patterns)
  file(GLOB seed_files ${patterns})
  foreach(seed ${seed_files})
    file(SIZE ${seed} seed_size)
    if(seed_size LESS 200000)  # the large fixture would slow every iteration
      file(COPY ${seed} DESTINATION ${CORPUS})
    endif()
  endforeach()
endif()
if(NOT DEFINED ENV{FLOTILLA_FUZZ_SECONDS})
  set(seconds 20)
else()
  set(seconds $ENV{FLOTILLA_FUZZ_SECONDS})
endif()
execute_process(
  COMMAND ${FUZZER} -seed=1 -max_total_time=${seconds} -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10
          -max_len=65536 -print_final_stats=1 ${CORPUS}
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "image decoder fuzzer (${FORMAT}) failed with ${result}")
endif()
