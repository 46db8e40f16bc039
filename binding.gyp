{
  # A CUDA backend will be a second target (or sources) under a condition on a `with_cuda` variable,
  # as better-sqlite3 gates its optional targets, so a machine without nvcc still builds this one.
  "targets": [
    {
      "target_name": "scissorhands_cpu",
      "sources": [
        "csrc/cpu/append.cc",
        "csrc/cpu/attention.cc",
        "csrc/cpu/context.cc",
        "csrc/cpu/evict.cc",
        "csrc/cpu/simd_avx2.cc",
        "csrc/cpu/simd_avx512.cc",
        "csrc/cpu/simd_scalar.cc",
        "csrc/cpu/store.cc",
        "csrc/cpu/tracker.cc",
        "csrc/napi/addon.cc",
        "csrc/napi/args.cc",
        "csrc/napi/calls.cc"
      ],
      "include_dirs": [
        "csrc/include",
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        # The loader compares this with package.json so that a stale build is never used.
        "SCISSORHANDS_VERSION=<!(node -p \"JSON.stringify(require('./package.json').version)\")"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      # ISO C++ and no FMA contraction: tracker rules and GQA sums must round exactly as the spec says.
      # No -march: AVX2 code is selected at run time (csrc/cpu/simd_avx2.cc).
      "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off", "-fvisibility=hidden"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CPLUSPLUSFLAGS": ["-ffp-contract=off", "-fvisibility=hidden"]
      },
      "msvs_settings": {
        "VCCLCompilerTool": { "ExceptionHandling": 1, "AdditionalOptions": ["/std:c++17"] }
      }
    }
  ]
}
