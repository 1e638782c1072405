// Constants of the float32 exp polynomial the vectorised kernels share (attention's softmax, GELU's
// erf): x = n ln2 + r with ln2 split in two for an exact n ln2, e^r by Cephes' degree-6 polynomial.
#pragma once

namespace mpt {

constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

}  // namespace mpt
