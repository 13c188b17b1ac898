// CUDA twin of spoco::embedding_affinities (csrc/core/mutex_watershed.hpp): the
// per-edge maths comes from csrc/core/embedding_weights.hpp, and the file is
// compiled with --fmad=false so CPU and GPU weights are bit-identical.
#include <stdexcept>
#include <string>

#include "core/embedding_weights.hpp"
#include "cuda/affinities.cuh"

namespace spoco::cuda {
namespace {

struct OffsetTable {
    int32_t d[kMaxChannels][3];
};

inline void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw std::runtime_error(std::string("spoco._cuda: ") + what + ": " + cudaGetErrorString(err));
}

// One thread per pixel, looping over all channels: the pixel's own embedding
// is re-read from L1 for every channel instead of from L2 (a first version with
// one thread per channel and pixel was bound by L2 traffic).
template <class T>
__global__ void embedding_affinities_kernel(const T* __restrict__ emb, T* __restrict__ out, int64_t D,
                                            int64_t Z, int64_t Y, int64_t X, int C, OffsetTable table,
                                            int n_attractive, T two_delta_d) {
    const int64_t N = Z * Y * X;
    const int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (u >= N) return;
    const int64_t x = u % X, y = (u / X) % Y, z = u / (X * Y);
    for (int c = 0; c < C; ++c) {
        const int64_t zz = z + table.d[c][0], yy = y + table.d[c][1], xx = x + table.d[c][2];
        T value = T(0);
        if (zz >= 0 && zz < Z && yy >= 0 && yy < Y && xx >= 0 && xx < X) {
            const int64_t v = (zz * Y + yy) * X + xx;
            T dist2 = T(0);
            for (int64_t d = 0; d < D; ++d) {  // same order as the CPU loop
                const T diff = emb[d * N + u] - emb[d * N + v];
                dist2 += diff * diff;
            }
            value = edge_priority(dist2, two_delta_d, c < n_attractive);
        }
        out[static_cast<int64_t>(c) * N + u] = value;
    }
}

}  // namespace

template <class T>
void embedding_affinities(const T* emb, T* out, int64_t D, const int64_t shape[3],
                          const std::vector<int64_t>& offsets, int n_attractive, T delta_d,
                          int device, cudaStream_t stream) {
    const int C = static_cast<int>(offsets.size() / 3);
    if (C < 1 || C > kMaxChannels) throw std::invalid_argument("number of offsets must be in [1, 128]");
    const int64_t N = shape[0] * shape[1] * shape[2];
    if (N == 0) return;
    OffsetTable table{};
    for (int c = 0; c < C; ++c)
        for (int k = 0; k < 3; ++k) table.d[c][k] = static_cast<int32_t>(offsets[3 * c + k]);
    check(cudaSetDevice(device), "cudaSetDevice");
    constexpr int threads = 256;
    const unsigned blocks = static_cast<unsigned>((N + threads - 1) / threads);
    embedding_affinities_kernel<T><<<blocks, threads, 0, stream>>>(emb, out, D, shape[0], shape[1], shape[2], C,
                                                                    table, n_attractive, T(2) * delta_d);
    check(cudaGetLastError(), "embedding_affinities launch");
}

template void embedding_affinities<float>(const float*, float*, int64_t, const int64_t[3],
                                          const std::vector<int64_t>&, int, float, int, cudaStream_t);
template void embedding_affinities<double>(const double*, double*, int64_t, const int64_t[3],
                                           const std::vector<int64_t>&, int, double, int, cudaStream_t);

}  // namespace spoco::cuda
