// KL's closed-form root on CPU: per row of logits θ and reference measure q, the max m and
// t = log Σ_j q_j exp(θ_j − m) (τ = m + t), in one pass over the row.
//
// XLA reads the logits twice for this (one fusion for the max, one for the exponentials, each
// over the whole batch: the rows have left the cache in between) and writes exp(θ − m) for the
// backward pass; here each row is read once, in blocks of 64 classes whose own max moves the
// running max first (the sum is rescaled then, a few times per row), so that no exponential
// exceeds 1. The exponentials are taken eight floats at a time by Cephes' expf (range reduction
// by ln 2 and a polynomial on [−ln 2 / 2, ln 2 / 2], about 1 ulp), summed in float within a
// block and in double across blocks.

#include <cmath>

#include "cpu_rows.h"

namespace fdiv_cpu {
namespace {

// A row is read in chunks of up to 1024 classes (4 KB, in L1): their max first, then their
// exponentials, which then depend on no result of the same chunk and overlap in the core (by
// blocks of 64 classes, whose sums are added up in float and then to double sums).
constexpr int64_t kChunk = 1024;
constexpr int kBlock = 64;

// exp(x) for x ≤ 0 or NaN: exactly 0 below −87.3 (where exp would be subnormal), NaN for NaN.
inline V8f ExpNonPositive(V8f x) {
  const V8f floor = Splat8(-100.0f);
  x = x < floor ? floor : x;  // −inf (a masked class) stays finite; NaN passes
  // n = round(x / ln 2) by the 1.5 · 2^23 trick (round to nearest), whose low bits hold n;
  // r = x − n ln 2 in two parts.
  const V8f magic = Splat8(12582912.0f);
  const V8f shifted = x * Splat8(1.44269504088896341f) + magic;
  const V8f n = shifted - magic;
  V8f r = x - n * Splat8(0.693359375f);
  r = r - n * Splat8(-2.12194440e-4f);
  V8f y = Splat8(1.9875691500e-4f);
  y = y * r + Splat8(1.3981999507e-3f);
  y = y * r + Splat8(8.3334519073e-3f);
  y = y * r + Splat8(4.1665795894e-2f);
  y = y * r + Splat8(1.6666665459e-1f);
  y = y * r + Splat8(5.0000001201e-1f);
  y = y * r + Splat8(1.0f);
  y = y * r + Splat8(1.0f);
  // 2^n from n's bits; 0 for n < −126 (a zero exponent field and mantissa).
  const V8i biased = reinterpret_cast<V8i>(shifted) - reinterpret_cast<V8i>(magic) + 127;
  const V8i scale = (biased > 0 ? biased : V8i{}) << 23;
  return y * reinterpret_cast<V8f>(scale);
}

struct RowSums {
  double max = -kInf;  // the row max (-inf: every class masked, or NaN)
  double sum = 0.0;    // Σ q exp(θ − max); NaN when the row holds a NaN, or +inf
  double q_sum = 0.0;  // Σ q
};

// The max of x[0, n) (n a multiple of 32), NaN ignored (its exponential is NaN).
inline double ChunkMax(const float* x, int64_t n) {
  const V8f neg = Splat8(-std::numeric_limits<float>::infinity());
  V8f m[4] = {neg, neg, neg, neg};
  for (int64_t i = 0; i < n; i += 32) {
    for (int u = 0; u < 4; ++u) {
      const V8f v = Load8(x + i + 8 * u);
      m[u] = v > m[u] ? v : m[u];
    }
  }
  m[0] = m[0] > m[1] ? m[0] : m[1];
  m[2] = m[2] > m[3] ? m[2] : m[3];
  m[0] = m[0] > m[2] ? m[0] : m[2];
  float top = m[0][0];
  for (int lane = 1; lane < 8; ++lane) top = std::max(top, m[0][lane]);
  return top;
}

// Adds Σ q exp(x − max) over x[0, n) (n a multiple of kBlock) to sums, and Σ q to q_sums.
template <bool shared_q>
inline void AddExponentials(const float* x, const float* q, int64_t n, float max, V4d* sums,
                            V4d* q_sums) {
  const V8f m = Splat8(max);
  for (int64_t i = 0; i < n; i += kBlock) {
    V8f a = Splat8(0.0f), b = a, qa = a;
    for (int u = 0; u < kBlock; u += 16) {
      V8f ea = ExpNonPositive(Load8(x + i + u) - m);
      V8f eb = ExpNonPositive(Load8(x + i + u + 8) - m);
      if constexpr (!shared_q) {
        const V8f wa = Load8(q + i + u), wb = Load8(q + i + u + 8);
        ea *= wa;
        eb *= wb;
        qa += wa + wb;
      }
      a += ea;
      b += eb;
    }
    a += b;
    sums[0] += ToDouble(V4f{a[0], a[1], a[2], a[3]});
    sums[1] += ToDouble(V4f{a[4], a[5], a[6], a[7]});
    if constexpr (!shared_q) {
      q_sums[0] += ToDouble(V4f{qa[0], qa[1], qa[2], qa[3]});
      q_sums[1] += ToDouble(V4f{qa[4], qa[5], qa[6], qa[7]});
    }
  }
}

// One row; q is per class (stride 1) unless shared, in which case the sums leave it out.
template <bool shared_q>
RowSums SumRow(const float* x, const float* q, int64_t k) {
  RowSums out;
  V4d sums[2] = {Splat(0.0), Splat(0.0)}, q_sums[2] = {Splat(0.0), Splat(0.0)};
  bool nan = false;
  const int64_t whole = k - k % kBlock;  // the classes of whole blocks
  for (int64_t j = 0; j < whole; j += kChunk) {
    const int64_t n = std::min(kChunk, whole - j);
    const double top = ChunkMax(x + j, n);
    if (top > out.max) {  // the sums so far, relative to the new max
      const V4d rescale = Splat(std::exp(out.max - top));
      sums[0] *= rescale;
      sums[1] *= rescale;
      out.max = top;
    }
    // Nothing to add while every class so far is masked (−inf − −inf would be NaN), but Q.
    const float max = out.max == -kInf ? 0.0f : static_cast<float>(out.max);
    AddExponentials<shared_q>(x + j, q + (shared_q ? 0 : j), n, max, sums, q_sums);
  }
  double sum = 0.0, q_sum = 0.0;
  for (int lane = 0; lane < 4; ++lane) {
    sum += sums[0][lane] + sums[1][lane];
    q_sum += q_sums[0][lane] + q_sums[1][lane];
  }
  for (int64_t j = whole; j < k; ++j) {  // the last classes: the max first, then their terms
    nan |= std::isnan(x[j]);
    if (x[j] > out.max) {
      sum *= std::exp(out.max - static_cast<double>(x[j]));
      out.max = x[j];
    }
  }
  for (int64_t j = whole; j < k; ++j) {
    const double weight = shared_q ? 1.0 : static_cast<double>(q[j]);
    if (!shared_q) q_sum += weight;
    if (out.max > -kInf) sum += weight * std::exp(static_cast<double>(x[j]) - out.max);
  }
  out.sum = nan ? kNaN : sum;
  out.q_sum = q_sum;
  return out;
}

struct Problem {
  RowLayout layout;
  const float* theta;
  const float* q;
  float* shift;
  float* t;
  float* q_sum;
  bool* empty;
};

template <bool shared_q>
void SolveRows(const Problem& p, int64_t begin, int64_t end) {
  const int64_t k = p.layout.classes;
  for (int64_t row = begin; row < end; ++row) {
    const float* q = p.q + p.layout.QRowOffset(row);
    RowSums s = SumRow<shared_q>(p.theta + row * k, q, k);
    if constexpr (shared_q) {
      s.q_sum = static_cast<double>(q[0]) * static_cast<double>(k);
      s.sum *= q[0];
    }
    const bool empty = s.max == -kInf && !std::isnan(s.sum);  // a row of NaN is not empty
    // As root_finding.row_stats: an empty row has frame 0 and Q = 1, a NaN row a NaN frame.
    p.empty[row] = empty;
    p.q_sum[row] = (empty || !(s.q_sum > 0.0)) ? 1.0f : static_cast<float>(s.q_sum);
    p.shift[row] = empty ? 0.0f : std::isnan(s.sum) ? static_cast<float>(kNaN)
                                                   : static_cast<float>(s.max);
    p.t[row] = empty ? 0.0f : static_cast<float>(std::log(s.sum));
  }
}

ffi::Error LogSumExpImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> theta,
                         ffi::Buffer<ffi::F32> q, ffi::ResultBuffer<ffi::F32> shift,
                         ffi::ResultBuffer<ffi::F32> t, ffi::ResultBuffer<ffi::F32> q_sum,
                         ffi::ResultBuffer<ffi::PRED> empty) {
  Problem p;
  if (ffi::Error error =
          MakeRowLayout(theta.dimensions(), q.dimensions(), "fdiv_log_sum_exp", &p.layout);
      error.failure()) {
    return error;
  }
  p.theta = theta.typed_data();
  p.q = q.typed_data();
  p.shift = shift->typed_data();
  p.t = t->typed_data();
  p.q_sum = q_sum->typed_data();
  p.empty = empty->typed_data();
  const bool shared_q = p.layout.q_class_stride == 0;
  ParallelRows(pool, p.layout.rows, [&p, shared_q](int64_t begin, int64_t end) {
    shared_q ? SolveRows<true>(p, begin, end) : SolveRows<false>(p, begin, end);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace fdiv_cpu

XLA_FFI_DEFINE_HANDLER_SYMBOL(FdivLogSumExp, fdiv_cpu::LogSumExpImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::PRED>>());
