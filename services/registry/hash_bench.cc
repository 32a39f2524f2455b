// registry_hash_bench: throughput of the registry's hashes on one core, each contender in turn
// within every round (so a burst of load elsewhere hits all alike): sha256 (OpenSSL, what every
// push and pull verifies), BLAKE3 keyed portable and with AVX2 (Note [BLAKE3 with AVX2]), and
// the Xet chunker + chunk hashes with either BLAKE3 path. One JSON line per measurement; driven by
// tools/bench/registry_hash.py.
//
//   registry_hash_bench --mib 256 --rounds 5
#include <openssl/evp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "services/registry/blake3.h"
#include "services/registry/xet_chunker.h"

namespace {

double Seconds(const std::function<void()>& operation) {
  const auto start = std::chrono::steady_clock::now();
  operation();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  size_t mib = 256;
  int rounds = 5;
  for (int index = 1; index + 1 < argc; index += 2) {
    if (std::strcmp(argv[index], "--mib") == 0) mib = std::strtoul(argv[index + 1], nullptr, 10);
    if (std::strcmp(argv[index], "--rounds") == 0) rounds = std::atoi(argv[index + 1]);
  }
  std::vector<uint8_t> data(mib << 20);
  uint64_t state = 88172645463325252ull;
  for (uint8_t& byte : data) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    byte = static_cast<uint8_t>(state);
  }
  flotilla::registry::Blake3Key key{};
  volatile uint8_t sink = 0;
  const bool has_simd = flotilla::registry::Blake3AllowSimd(true);
  const bool has_avx512 = flotilla::registry::Blake3AllowAvx512(true);
  // SIMD level: 0 portable, 1 AVX2 (eight chunks), 2 AVX-512 (sixteen chunks).
  struct Contender {
    const char* name;
    int simd;
    std::function<void()> run;
  };
  std::vector<Contender> contenders = {
      {"sha256 (OpenSSL)", 0,
       [&] {
         unsigned char digest[EVP_MAX_MD_SIZE];
         unsigned int length = 0;
         EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr);
         sink = sink ^ digest[0];
       }},
      {"BLAKE3 keyed, portable", 0,
       [&] { sink = sink ^ flotilla::registry::Blake3Keyed(key, data.data(), data.size())[0]; }},
      {"BLAKE3 keyed, AVX2", 1,
       [&] { sink = sink ^ flotilla::registry::Blake3Keyed(key, data.data(), data.size())[0]; }},
      {"BLAKE3 keyed, AVX-512", 2,
       [&] { sink = sink ^ flotilla::registry::Blake3Keyed(key, data.data(), data.size())[0]; }},
      {"Xet chunker + chunk hashes, portable BLAKE3", 0,
       [&] { sink = sink ^ static_cast<uint8_t>(flotilla::registry::XetChunkHashes(data.data(), data.size()).size()); }},
      {"Xet chunker + chunk hashes, AVX2 BLAKE3", 1,
       [&] { sink = sink ^ static_cast<uint8_t>(flotilla::registry::XetChunkHashes(data.data(), data.size()).size()); }},
      {"Xet chunker + chunk hashes, AVX-512 BLAKE3", 2,
       [&] { sink = sink ^ static_cast<uint8_t>(flotilla::registry::XetChunkHashes(data.data(), data.size()).size()); }},
  };
  for (int round = 0; round < rounds; ++round) {
    for (const Contender& contender : contenders) {
      if ((contender.simd >= 1 && !has_simd) || (contender.simd == 2 && !has_avx512)) continue;
      flotilla::registry::Blake3AllowSimd(contender.simd >= 1);
      flotilla::registry::Blake3AllowAvx512(contender.simd == 2);
      const double seconds = Seconds(contender.run);
      std::printf("{\"round\": %d, \"name\": \"%s\", \"mib\": %zu, \"seconds\": %.6f}\n", round, contender.name, mib,
                  seconds);
      std::fflush(stdout);
    }
  }
  flotilla::registry::Blake3AllowSimd(true);
  flotilla::registry::Blake3AllowAvx512(true);
  return sink == 255 ? 1 : 0;
}
