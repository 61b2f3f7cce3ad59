// Runtime switches of the engine, for tests and benchmarks. Set from Python through
// bulkformer.data.engine (set_simd, set_gene_major, set_inflate_backend), read at the start of
// each call: changing one takes effect on the next call, in the same process. Every setting
// gives bit-identical results; only speed differs.
#pragma once

#include <atomic>

namespace bulkformer {
namespace switches {
inline std::atomic<bool> simd{true};        // AVX2 loops where the CPU has them (else portable)
inline std::atomic<bool> gene_major{true};  // gene-major accumulation of wide chunk rows
inline std::atomic<bool> force_zlib{false};  // zlib even when libdeflate was linked
}  // namespace switches
}  // namespace bulkformer
