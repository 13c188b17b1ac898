// Host launchers of the Eq. 12 affinity kernel (no libtorch; raw device pointers).
#pragma once
#include <cstdint>
#include <vector>

#include <cuda_runtime.h>

namespace spoco::cuda {

constexpr int kMaxChannels = 128;

/// out (C, N) = Eq. 12 priorities of embeddings emb (D, N) on a (z, y, x) grid:
/// 1 - w on the first n_attractive channels, w on the rest, 0 where the offset
/// leaves the grid. Same arithmetic as spoco::embedding_affinities on the CPU.
/// Asynchronous on `stream`; throws std::runtime_error on launch errors.
template <class T>
void embedding_affinities(const T* emb, T* out, int64_t D, const int64_t shape[3],
                          const std::vector<int64_t>& offsets, int n_attractive, T delta_d,
                          int device, cudaStream_t stream);

}  // namespace spoco::cuda
