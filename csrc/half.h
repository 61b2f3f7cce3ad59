// float32 -> float16 conversion with round-to-nearest-even, bit-identical to numpy's
// astype(np.float16) (npy_floatbits_to_halfbits), so the C++ engine and the numpy reference
// agree exactly once both hold the same float32.
#pragma once

#include <cstdint>
#include <cstring>

namespace bulkformer {

inline uint16_t float_to_half(float value) {
  uint32_t f;
  std::memcpy(&f, &value, 4);
  uint32_t f_exp, f_sig;
  uint16_t h_sgn, h_exp, h_sig;

  h_sgn = static_cast<uint16_t>((f & 0x80000000u) >> 16);
  f_exp = (f & 0x7f800000u);

  // Exponent overflow/NaN converts to signed inf/NaN
  if (f_exp >= 0x47800000u) {
    if (f_exp == 0x7f800000u) {
      f_sig = (f & 0x007fffffu);
      if (f_sig != 0) {
        uint16_t ret = static_cast<uint16_t>(0x7c00u + (f_sig >> 13));
        if (ret == 0x7c00u) ret++;  // NaN stays NaN
        return static_cast<uint16_t>(h_sgn + ret);
      }
      return static_cast<uint16_t>(h_sgn + 0x7c00u);
    }
    return static_cast<uint16_t>(h_sgn + 0x7c00u);  // overflow to inf
  }

  // Exponent underflow converts to subnormal half or signed zero
  if (f_exp <= 0x38000000u) {
    if (f_exp < 0x33000000u) return h_sgn;  // signed zero
    f_exp >>= 23;
    f_sig = (0x00800000u + (f & 0x007fffffu));
    // If it's not exactly represented, it underflowed (no FP flags tracked here)
    f_sig >>= (113 - f_exp);
    // Handle rounding by adding 1 to the bit beyond half precision (round to nearest even)
    if ((f_sig & 0x00003fffu) != 0x00001000u || (f & 0x000007ffu)) f_sig += 0x00001000u;
    h_sig = static_cast<uint16_t>(f_sig >> 13);
    // If the rounding causes a bit to spill into h_exp, it becomes the smallest normal: correct.
    return static_cast<uint16_t>(h_sgn + h_sig);
  }

  // Regular case with no overflow or underflow
  h_exp = static_cast<uint16_t>((f_exp - 0x38000000u) >> 13);
  f_sig = (f & 0x007fffffu);
  if ((f_sig & 0x00003fffu) != 0x00001000u) f_sig += 0x00001000u;
  h_sig = static_cast<uint16_t>(f_sig >> 13);
  // If the rounding spilled into the exponent, the addition below carries correctly, and an
  // overflow to inf is the right result.
  return static_cast<uint16_t>(h_sgn + h_exp + h_sig);
}

}  // namespace bulkformer
