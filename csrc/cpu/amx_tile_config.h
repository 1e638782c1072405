// The AMX tile configuration (palette 1) and its loading, shared by the *_amx.cpp kernels.
#pragma once
#include <cstdint>

namespace mpt {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of each tile (0: unused)
  uint8_t rows[16] = {};
};

// ldtilecfg with the whole 64-byte struct as the asm operand: GCC 12's _tile_loadconfig names only its
// first 8 bytes, so at -O2 the stores of colsb / rows could be dropped as dead (a later tileloadd then
// faults with SIGILL on an unconfigured tile).
inline void load_tile_config(const TileConfig& c) { __asm__ volatile("ldtilecfg %0" ::"m"(c)); }

}  // namespace mpt
