// dvakern::ring_append_cuda: append one frame's K/V into a ring KV cache on CUDA, reading the
// frame index from device memory (pos is a 0-dim int64 CUDA tensor), so a CUDA graph can replay
// the step without a host sync. Same contract as the append inside dvakern::ring_decode
// (dvakern/ring_decode.py): slot = pos % W; k_cache[:, :, slot] = k_new; slot_pos[slot] = pos.
// Used where the model appends without attending (e.g. prefill of a real frame's cache entry
// while a Triton-free build runs attention in cuDNN/SDPA).
// Light headers on purpose: ATen/cuda/CUDAContext.h pulls in cuSPARSE/cuBLAS headers that a
// minimal CUDA toolkit may lack; the op needs only a stream, a device guard and a launch check.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace {

template <typename scalar_t>
__global__ void ring_append_kernel(scalar_t* __restrict__ kc, scalar_t* __restrict__ vc, int64_t* __restrict__ slot_pos,
                                   const scalar_t* __restrict__ kn, const scalar_t* __restrict__ vn,
                                   const int64_t* __restrict__ pos, int64_t BH, int64_t W, int64_t ND) {
  const int64_t p = *pos;
  const int64_t slot = ((p % W) + W) % W;
  const int64_t total = BH * ND;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t bh = i / ND, j = i % ND;
    const int64_t dst = (bh * W + slot) * ND + j;  // cache (B*H, W, N*D)
    kc[dst] = kn[i];
    vc[dst] = vn[i];
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) slot_pos[slot] = p;
}

void ring_append_cuda(at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& slot_pos, const at::Tensor& k_new,
                      const at::Tensor& v_new, const at::Tensor& pos) {
  TORCH_CHECK(k_cache.is_cuda() && k_cache.dim() == 5 && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "ring_append_cuda: caches must be contiguous CUDA (B, H, W, N, D)");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "ring_append_cuda: k_cache and v_cache differ in shape");
  const int64_t B = k_cache.size(0), H = k_cache.size(1), W = k_cache.size(2), N = k_cache.size(3),
                D = k_cache.size(4);
  TORCH_CHECK(k_new.sizes() == at::IntArrayRef({B, H, N, D}) && v_new.sizes() == k_new.sizes(),
              "ring_append_cuda: k_new/v_new must be (B, H, N, D) matching the cache");
  TORCH_CHECK(slot_pos.scalar_type() == at::kLong && slot_pos.numel() == W && pos.scalar_type() == at::kLong &&
                  pos.numel() == 1, "ring_append_cuda: slot_pos (W,) and pos (0-dim) must be int64");
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const at::Tensor kn = k_new.to(k_cache.scalar_type()).contiguous();
  const at::Tensor vn = v_new.to(v_cache.scalar_type()).contiguous();
  const int64_t total = B * H * N * D;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 4096));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k_cache.scalar_type(), "ring_append_cuda", [&] {
    ring_append_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(), slot_pos.data_ptr<int64_t>(),
        kn.data_ptr<scalar_t>(), vn.data_ptr<scalar_t>(), pos.data_ptr<int64_t>(), B * H, W, N * D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dvakern, m) {
  m.def("ring_append_cuda(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) slot_pos, Tensor k_new, "
        "Tensor v_new, Tensor pos) -> ()");
}

TORCH_LIBRARY_IMPL(dvakern, CUDA, m) { m.impl("ring_append_cuda", &ring_append_cuda); }
