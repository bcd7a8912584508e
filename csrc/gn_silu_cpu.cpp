// dvakern::gn_mod_silu_fwd_cpu: fused GroupNorm + scale/shift modulation + SiLU forward on CPU, fp32,
// NCHW or channels_last, parallel over (sample, pixel chunk) so batch 1 uses every core.
//
//   y = silu((GN(x) * weight + bias) * (1 + scale) + shift),  returns (y, mean (B, G), rstd (B, G))
//
// Same schema and semantics as the Python op dvakern::gn_mod_silu_fwd (dvakern/gn_silu.py), which
// calls this on CPU when the extension is loaded. Statistics use sums shifted by each group's
// first element (fp32 within a chunk of <= 4096 values, double across chunks), so large means do
// not cancel. The loops are written to auto-vectorise (-O3 -fopenmp-simd -fno-trapping-math; without
// the last, GCC 12 refuses to if-convert the exp clamp and the SiLU loops stay scalar): a polynomial exp
// instead of std::exp, simd reductions. Measured against the 4-op ATen reference in
// bench/test_bench_kernels.py (docs/kernels.md has the numbers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// exp(x) for fp32 (Cephes expf: Cody-Waite range reduction + degree-6 polynomial, ~2 ulp),
// branch-free so the compiler vectorises the loops that call it.
inline float exp_poly(float x) {
  x = std::min(88.0f, std::max(-87.0f, x));
  const float t = x * 1.44269504088896341f;
  // round to nearest without a branch: t + 126.5 > 0, so truncation is floor
  const int32_t ni = static_cast<int32_t>(t + 126.5f) - 126;
  const float n = static_cast<float>(ni);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (ni + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

inline float silu(float a) { return a / (1.0f + exp_poly(-a)); }

// The apply loops carry nearly all the arithmetic: on x86-64 they get an AVX2 clone picked at load
// time (GCC/clang function multiversioning), so the extension stays portable but uses 8 lanes.
#if defined(__x86_64__) && defined(__GNUC__)
#define DVA_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DVA_CLONES
#endif

// y[i] = silu(x[i] * a[i] + a0[i]): one channels_last pixel row (per-channel affine)
DVA_CLONES void silu_affine_row(const float* __restrict x, float* __restrict y, const float* __restrict a,
                                const float* __restrict a0, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = silu(x[i] * a[i] + a0[i]);
}

// y[i] = silu(x[i] * a + a0): one NCHW channel plane
DVA_CLONES void silu_affine_plane(const float* __restrict x, float* __restrict y, float a, float a0, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = silu(x[i] * a + a0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gn_mod_silu_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
    int64_t num_groups, double eps) {
  TORCH_CHECK(x_in.dim() == 4, "gn_mod_silu_fwd_cpu: x must be (B, C, H, W), got ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "gn_mod_silu_fwd_cpu: fp32 only, got ", x_in.scalar_type());
  const int64_t B = x_in.size(0), C = x_in.size(1), HW = x_in.size(2) * x_in.size(3);
  TORCH_CHECK(num_groups > 0 && C % num_groups == 0, "gn_mod_silu_fwd_cpu: channels ", C,
              " not divisible by num_groups=", num_groups);
  TORCH_CHECK(scale.has_value() == shift.has_value(), "gn_mod_silu_fwd_cpu: pass both scale and shift, or neither");
  const int64_t G = num_groups, CG = C / G;
  const bool cl = x_in.is_contiguous(at::MemoryFormat::ChannelsLast) && !x_in.is_contiguous();
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  at::Tensor y = at::empty_like(x);  // keeps the memory format
  at::Tensor mean = at::empty({B, G}, x.options());
  at::Tensor rstd = at::empty({B, G}, x.options());
  const at::Tensor w = weight.to(at::kFloat).contiguous(), bi = bias.to(at::kFloat).contiguous();
  at::Tensor sc, sh;
  if (scale.has_value()) {
    sc = scale->to(at::kFloat).contiguous();
    sh = shift->to(at::kFloat).contiguous();
    TORCH_CHECK(sc.numel() == B * C && sh.numel() == B * C, "gn_mod_silu_fwd_cpu: scale/shift must be (B, C)");
  }
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = bi.data_ptr<float>();
  const float* scp = sc.defined() ? sc.data_ptr<float>() : nullptr;
  const float* shp = sh.defined() ? sh.data_ptr<float>() : nullptr;
  float* mp = mean.data_ptr<float>();
  float* rp = rstd.data_ptr<float>();

  // per-(sample, channel) affine of the whole op before the SiLU: a = x * A + Bc
  std::vector<float> A(B * C), Bc(B * C);
  // --- statistics: chunks of pixels in parallel, per-chunk per-channel shifted sums
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(HW, 4096 / std::max<int64_t>(1, cl ? C : 1)));
  const int64_t nchunk = (HW + chunk - 1) / chunk;
  std::vector<double> part(B * nchunk * C * 2, 0.0);
  std::vector<float> K(B * G);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < G; ++g) K[b * G + g] = cl ? xp[b * HW * C + g * CG] : xp[(b * C + g * CG) * HW];
  at::parallel_for(0, B * nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nchunk, p0 = (i % nchunk) * chunk, p1 = std::min(HW, p0 + chunk);
      double* out = &part[i * C * 2];
      if (cl) {
        std::vector<float> a1(C, 0.0f), a2(C, 0.0f), k(C);
        for (int64_t c = 0; c < C; ++c) k[c] = K[b * G + c / CG];
        for (int64_t p = p0; p < p1; ++p) {
          const float* row = xp + (b * HW + p) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const float d = row[c] - k[c];
            a1[c] += d;
            a2[c] += d * d;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          out[2 * c] = a1[c];
          out[2 * c + 1] = a2[c];
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const float* plane = xp + (b * C + c) * HW;
          const float k = K[b * G + c / CG];
          float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
          for (int64_t p = p0; p < p1; ++p) {
            const float d = plane[p] - k;
            s1 += d;
            s2 += d * d;
          }
          out[2 * c] = s1;
          out[2 * c + 1] = s2;
        }
      }
    }
  });
  const double n = static_cast<double>(CG * HW);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < G; ++g) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t i = 0; i < nchunk; ++i)
        for (int64_t c = g * CG; c < (g + 1) * CG; ++c) {
          s1 += part[((b * nchunk + i) * C + c) * 2];
          s2 += part[((b * nchunk + i) * C + c) * 2 + 1];
        }
      const double m1 = s1 / n;
      const double var = std::max(0.0, s2 / n - m1 * m1);
      const float mu = static_cast<float>(K[b * G + g] + m1);
      const float r = static_cast<float>(1.0 / std::sqrt(var + eps));
      mp[b * G + g] = mu;
      rp[b * G + g] = r;
      for (int64_t c = g * CG; c < (g + 1) * CG; ++c) {
        float a = r * wp[c], a0 = bp[c] - mu * a;
        if (scp) {
          const float s = 1.0f + scp[b * C + c];
          a *= s;
          a0 = a0 * s + shp[b * C + c];
        }
        A[b * C + c] = a;
        Bc[b * C + c] = a0;
      }
    }
  }
  // --- apply: contiguous runs in memory order
  if (cl) {
    at::parallel_for(0, B * nchunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / nchunk, p0 = (i % nchunk) * chunk, p1 = std::min(HW, p0 + chunk);
        const float* a = &A[b * C];
        const float* a0 = &Bc[b * C];
        for (int64_t p = p0; p < p1; ++p) {
          silu_affine_row(xp + (b * HW + p) * C, yp + (b * HW + p) * C, a, a0, C);
        }
      }
    });
  } else {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        silu_affine_plane(xp + bc * HW, yp + bc * HW, A[bc], Bc[bc], HW);
      }
    });
  }
  return {y, mean, rstd};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dvakern, m) {
  m.def("gn_mod_silu_fwd_cpu(Tensor x, Tensor weight, Tensor bias, Tensor? scale, Tensor? shift, "
        "int num_groups, float eps) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dvakern, CPU, m) { m.impl("gn_mod_silu_fwd_cpu", &gn_mod_silu_fwd_cpu); }
