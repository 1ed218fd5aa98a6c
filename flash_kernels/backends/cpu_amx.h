// AMX tile helpers shared by the CPU kernels that use tiles (cpu_linear.cpp, cpu_prefill_amx.cpp); included
// inside their AMX sections only.
#pragma once
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstdint>

namespace prism_amx {

// Linux hands out the AMX tile state only to a process that asked for it (arch_prctl ARCH_REQ_XCOMP_PERM,
// XFEATURE_XTILEDATA); oneDNN asks too, asking again is harmless.
inline bool tiles_permitted() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-7 with rows[t] rows of 64 bytes each (16 fp32 / 32 bf16).
inline void configure(const uint8_t (&rows)[8]) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = rows[t];
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

}  // namespace prism_amx
