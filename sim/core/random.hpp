// Counter-based random streams.
//
// Every random number selfnorm draws is a pure function of (seed, point, kind, trial, layer,
// element index): the i-th 64-bit word of a stream is mix64(key + (i + 1) * golden), the
// SplitMix64 generator (Steele, Lea, Flood 2014), whose output passes BigCrush. Because any
// element can be computed on its own, a matrix can be filled in slices by any number of threads
// and the values do not change; streams for weights, inputs and upstream gradients never share a
// key, so changing the batch size never changes the weights.
//
// Normals come from the Box-Muller transform evaluated with vectorisable log/sin/cos: float
// streams use one word per pair (32-bit uniforms, |z| up to 6.8), double streams two words per
// pair (53-bit uniforms). Elements are grouped 128 at a time: element 128g + k (k < 64) is
// r_k cos(theta_k) and element 128g + 64 + k is r_k sin(theta_k) of pair 64g + k.
#pragma once

#include <cstddef>
#include <cstdint>

namespace selfnorm {

// What a stream is for. Part of the key, so streams of different kinds never coincide.
enum class StreamKind : std::uint64_t {
  weights = 1,
  biases = 2,
  inputs = 3,
  upstream = 4,
  dropout = 5,
};

// SplitMix64's output function: a bijective 64-bit mixer.
constexpr std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// Key of the stream for (seed, point, kind, trial, layer); distinct inputs give unrelated keys.
constexpr std::uint64_t stream_key(std::uint64_t seed, std::uint64_t point, StreamKind kind,
                                   std::uint64_t trial, std::uint64_t layer) {
  std::uint64_t h = mix64(seed + kGolden);
  h = mix64(h ^ mix64(point + 0x632BE59BD9B4E019ULL));
  h = mix64(h ^ mix64(static_cast<std::uint64_t>(kind) + 0x85157AF5ULL));
  h = mix64(h ^ mix64(trial + 0xD6E8FEB86659FD93ULL));
  h = mix64(h ^ mix64(layer + 0xA0761D6478BD642FULL));
  return h;
}

// What stream_word(key, i) mixes. Element i + 1's is element i's plus kGolden (mod 2^64), so a
// run of consecutive words can carry it along by addition.
constexpr std::uint64_t stream_argument(std::uint64_t key, std::uint64_t i) { return key + (i + 1) * kGolden; }

// The i-th 64-bit word of stream `key`.
constexpr std::uint64_t stream_word(std::uint64_t key, std::uint64_t i) { return mix64(stream_argument(key, i)); }

// out[j] = mean + stddev * z[first + j] for j < count, z the stream's standard normals.
template <class T>
void fill_normal(std::uint64_t key, std::uint64_t first, std::size_t count, T* out, T mean, T stddev);

// out[j] = lo + (hi - lo) * u[first + j], u uniform on (0, 1]: never 0, and 1 only where the
// largest word rounds up to it (probability 2^-24 in float, 2^-53 in double).
template <class T>
void fill_uniform(std::uint64_t key, std::uint64_t first, std::size_t count, T* out, T lo, T hi);

// A uniform double on (0, 1] from one word (53 random bits); 1 only from the largest word, whose
// midpoint 1 - 2^-54 rounds up.
constexpr double uniform_open(std::uint64_t word) {
  return (static_cast<double>(word >> 11) + 0.5) * 0x1.0p-53;
}

// Element i of stream `key` as a uniform on (0, 1]: exactly what fill_uniform(key, i, 1, out, 0, 1)
// writes (24 random bits in float, 53 in double). Uniforms take one word each, so any element is
// one mix away, in any order.
template <class T>
constexpr T uniform_element(std::uint64_t key, std::uint64_t i) {
  const std::uint64_t w = stream_word(key, i);
  if constexpr (sizeof(T) == 4) {
    return (static_cast<float>(static_cast<std::uint32_t>(w >> 40)) + 0.5f) * 0x1.0p-24f;
  } else {
    return uniform_open(w);
  }
}

}  // namespace selfnorm
