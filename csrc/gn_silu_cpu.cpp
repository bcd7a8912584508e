// dvakern::gn_mod_silu_fwd_cpu: fused GroupNorm + scale/shift modulation + SiLU forward on CPU, fp32,
// NCHW or channels_last, parallel over (sample, pixel chunk) so batch 1 uses every core.
//
//   y = silu((GN(x) * weight + bias) * (1 + scale) + shift),  returns (y, mean (B, G), rstd (B, G))
//
// Same schema and semantics as the Python op dvakern::gn_mod_silu_fwd (dvakern/gn_silu.py), which
// calls this on CPU when the extension is loaded. Statistics use sums shifted by each group's
// first element, accumulated in double, so large means do not cancel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

namespace {

inline float silu(float a) { return a / (1.0f + std::exp(-a)); }

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
        for (int64_t p = p0; p < p1; ++p) {
          const float* row = xp + (b * HW + p) * C;
          for (int64_t c = 0; c < C; ++c) {
            const double d = row[c] - K[b * G + c / CG];
            out[2 * c] += d;
            out[2 * c + 1] += d * d;
          }
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const float* plane = xp + (b * C + c) * HW;
          const float k = K[b * G + c / CG];
          double s1 = 0.0, s2 = 0.0;
          for (int64_t p = p0; p < p1; ++p) {
            const double d = plane[p] - k;
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
          const float* row = xp + (b * HW + p) * C;
          float* yrow = yp + (b * HW + p) * C;
          for (int64_t c = 0; c < C; ++c) yrow[c] = silu(row[c] * a[c] + a0[c]);
        }
      }
    });
  } else {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const float a = A[bc], a0 = Bc[bc];
        const float* plane = xp + bc * HW;
        float* yplane = yp + bc * HW;
        for (int64_t p = 0; p < HW; ++p) yplane[p] = silu(plane[p] * a + a0);
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
