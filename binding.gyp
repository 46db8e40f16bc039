{
  # The CPU addon is always built. The CUDA addon (a second target, scissorhands_cuda, holding the CPU
  # kernels too) is built when scripts/cuda-config.cjs finds nvcc and libcudart_static.a, as better-sqlite3
  # gates its optional targets: a machine without nvcc (or with SCISSORHANDS_CPU_ONLY=1) builds the CPU one
  # only. SCISSORHANDS_CUDA_ARCHS (default "80,86,89,90") names the architectures compiled.
  "variables": {
    "with_cuda%": "<!(node scripts/cuda-config.cjs with_cuda)",
    "cuda_nvcc%": "<!(node scripts/cuda-config.cjs nvcc)",
    "cuda_libdir%": "<!(node scripts/cuda-config.cjs libdir)",
    "cuda_archs%": "<!(node scripts/cuda-config.cjs archs)",
    "cpu_sources": [
      "csrc/cpu/append.cc",
      "csrc/cpu/attention.cc",
      "csrc/cpu/context.cc",
      "csrc/cpu/evict.cc",
      "csrc/cpu/pack.cc",
      "csrc/cpu/packed_attention.cc",
      "csrc/cpu/packed_store.cc",
      "csrc/cpu/simd_avx2.cc",
      "csrc/cpu/simd_avx512.cc",
      "csrc/cpu/simd_scalar.cc",
      "csrc/cpu/store.cc",
      "csrc/cpu/tracker.cc",
      "csrc/napi/addon.cc",
      "csrc/napi/args.cc",
      "csrc/napi/calls.cc",
      "csrc/napi/packed.cc"
    ]
  },
  "target_defaults": {
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
  },
  "targets": [
    {
      "target_name": "scissorhands_cpu",
      "sources": ["<@(cpu_sources)"]
    }
  ],
  "conditions": [
    ["with_cuda==1", {
      "targets": [
        {
          "target_name": "scissorhands_cuda",
          # One translation unit per op family, compiled by nvcc for every architecture at once (-t 0).
          "sources": [
            "<@(cpu_sources)",
            "csrc/napi/cuda_calls.cc",
            "csrc/cuda/append.cu",
            "csrc/cuda/decode.cu",
            "csrc/cuda/evict.cu",
            "csrc/cuda/heads.cu",
            "csrc/cuda/observe.cu",
            "csrc/cuda/pack.cu",
            "csrc/cuda/packed.cu",
            "csrc/cuda/prefill.cu",
            "csrc/cuda/runtime.cu",
            "csrc/cuda/store.cu"
          ],
          "defines": ["SCISSORHANDS_WITH_CUDA"],
          "rules": [
            {
              "rule_name": "nvcc",
              "extension": "cu",
              "inputs": ["csrc/cuda/api.h", "csrc/cuda/common.cuh", "csrc/cuda/internal.cuh", "csrc/cuda/packing.cuh"],
              "outputs": ["<(INTERMEDIATE_DIR)/cuda/<(RULE_INPUT_ROOT).o"],
              "message": "nvcc <(RULE_INPUT_PATH)",
              "process_outputs_as_sources": 1,
              "action": [
                "<(cuda_nvcc)", "-std=c++17", "-O3", "-t", "0", "-lineinfo",
                "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                "<!@(node scripts/cuda-config.cjs gencode)",
                "-DSCISSORHANDS_CUDA_ARCHS=<(cuda_archs)",
                "-I<(module_root_dir)/csrc/include",
                "-c", "<(RULE_INPUT_PATH)", "-o", "<@(_outputs)"
              ]
            }
          ],
          # cudart is linked statically: the addon needs only the NVIDIA driver at run time, and loads
          # (reporting no device) where there is none.
          "libraries": ["<(cuda_libdir)/libcudart_static.a", "-ldl", "-lrt", "-lpthread"]
        }
      ]
    }]
  ]
}
