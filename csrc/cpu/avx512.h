// What every AVX-512 translation unit starts with: the intrinsics header and the target attribute of
// functions compiled for AVX-512 inside a file built without -march (dispatch is at run time).
// GCC 12 warns on the AVX-512 header's own _mm512_undefined_* placeholders once inlined (GCC bug 105593);
// the warnings point into the header, so they are silenced for its text only.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define SH_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
