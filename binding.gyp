{
  # Fallback build for machines without CMake: node-gyp, CPU backend only (CMakeLists.txt is the main build).
  "targets": [
    {
      "target_name": "wnlstm_kernels_avx2",
      "type": "static_library",
      "sources": ["native/cpu/kernels_avx2.cc"],
      "include_dirs": ["native/include", "native/cpu"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-trapping-math", "-fPIC", "-mavx2", "-mfma", "-ffp-contract=fast"]
    },
    {
      "target_name": "wnlstm_kernels_avx512",
      "type": "static_library",
      "sources": ["native/cpu/kernels_avx512.cc"],
      "include_dirs": ["native/include", "native/cpu"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-trapping-math", "-fPIC", "-mavx512f", "-mfma", "-ffp-contract=fast"]
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
        "native/napi/addon.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native/include", "native/cpu"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-trapping-math", "-fexceptions", "-ffp-contract=fast"]
    }
  ]
}
