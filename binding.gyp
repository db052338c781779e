{
  # Fallback build for machines without CMake: node-gyp, CPU backend only (CMakeLists.txt is the main
  # build). The kernel variants are static libraries because each needs its own ISA flags.
  "target_defaults": {
    "include_dirs": ["native/include", "native/cpu"],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED",
                "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
    "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-fexceptions", "-fno-trapping-math", "-ffp-contract=fast"]
  },
  "targets": [
    {
      "target_name": "wnlstm_kernels_avx2",
      "type": "static_library",
      "sources": ["native/cpu/kernels_avx2.cc"],
      "cflags_cc": ["-mavx2", "-mfma"]
    },
    {
      "target_name": "wnlstm_kernels_avx512",
      "type": "static_library",
      "sources": ["native/cpu/kernels_avx512.cc"],
      "cflags_cc": ["-mavx512f", "-mfma"]
    },
    {
      "target_name": "wnlstm",
      "dependencies": ["wnlstm_kernels_avx2", "wnlstm_kernels_avx512"],
      "sources": [
        "native/common/config.cc",
        "native/common/no_cuda.cc",
        "native/cpu/thread_pool.cc",
        "native/cpu/kernels.cc",
        "native/cpu/kernels_generic.cc",
        "native/cpu/lstm_cell.cc",
        "native/cpu/ops.cc",
        "native/common/model.cc",
        "native/napi/addon.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"]
    }
  ]
}
