// The root of the f-softargmax for the Jensen–Shannon generator, on CPU.
//
// With the anchor a = log 2 (the pole of (f*)'), the mass of a class at the anchored root t is
//
//     p_j = q_j s(r_j),   s(r) = e^r / (1 − e^r) = 1 / expm1(−r),   r_j = z_j − t < 0,
//
// z_j = θ_j − max θ, and t > 0 solves S(t) = Σ_j p_j = 1. Every pass of the JAX solvers takes
// an exponential per class (JS cost about 4× cross-entropy's time at V = 32k). Here a row's
// exponentials are taken once, E_j = exp(z_j − t_0) at the lower bound t_0 of the root, and
// every later pass finds e^(r_j) = c E_j with c = exp(t_0 − t) ≤ 1: a product and a division
// per class, over the row in cache. Where c E_j > 1/2 the class is next to the pole and
// 1 − c E_j would lose the digits of r_j that its mass depends on (the top class of a row with
// uniform q lies ~3e-5 below the pole at 32768 classes): those few classes are summed in double
// from r_j itself. The other classes' terms are within a few float ulps (the division by
// 1 − c E_j ≥ 1/2 at most doubles the error of c E_j), summed in float over blocks of 256
// classes and in double across blocks.
//
// Per row: a pass for the max, the NaN test and the bracket (root_finding.bracket: the argmax's
// bound and Jensen's); a pass that writes E to a buffer; then safeguarded Newton on
// G(t) = f'(S / Q) − f'(1 / Q) from the lower bound, whose step is exact for one class of weight
// Q and close to exact for many classes of small mass (log S, as KL's): two or three passes
// over E for random rows with uniform or unit q. The pass expected to be the last also sums the
// value's terms −q_j log(1 − e^(r_j)) = q_j (f*(z_j − t) + f(0)).

#include <cmath>

#include "cpu_rows.h"

namespace fdiv_cpu {
namespace {

// Besides kStepTolerance: Newton's next error is about the square of a mass this close to 1
// (the float terms' rounding is ~1e-7 of the mass).
constexpr double kMassTolerance = 0x1p-17;
// A pass sums the value's terms once the mass before it is this close to 1: the next step
// then lands within kMassTolerance (Newton squares the error).
constexpr double kValueWithin = 3e-2;
// Above this, e^r is summed from r in double (see the top of the file).
constexpr float kNearPole = 0.5f;

// exp(x) for x ≤ 88 (NaN for NaN) by Cephes' expf: n = round(x / ln 2), a polynomial of
// x − n ln 2 on [−ln 2 / 2, ln 2 / 2] (about 1 ulp), times 2^n; exactly 0 below −87.3.
inline V8f Exp(V8f x) {
  const V8f floor = Splat8(-100.0f);
  x = x < floor ? floor : x;  // −inf (a masked class) stays finite; NaN passes
  // n by the 1.5 · 2^23 trick (round to nearest), whose low bits hold n; x − n ln 2 in two
  // parts.
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

// log(1 − v) for v in [0, 1/2]: −2 atanh(u) with u = v / (2 − v) ≤ 1/3, by its series to u^15
// (the next term is below 1e-9 of the sum).
inline V8f Log1mx(V8f v) {
  const V8f u = v / (Splat8(2.0f) - v), u2 = u * u;
  V8f y = Splat8(1.0f / 15.0f);
  y = y * u2 + Splat8(1.0f / 13.0f);
  y = y * u2 + Splat8(1.0f / 11.0f);
  y = y * u2 + Splat8(1.0f / 9.0f);
  y = y * u2 + Splat8(1.0f / 7.0f);
  y = y * u2 + Splat8(1.0f / 5.0f);
  y = y * u2 + Splat8(1.0f / 3.0f);
  y = y * u2 + Splat8(1.0f);
  return Splat8(-2.0f) * u * y;
}

// Σ q s (the mass), Σ q s (1 + s) (its slope in −t) and Σ q log(1 − e^r) (the value's, when
// asked for), without a shared q.
struct JsSums {
  double mass = 0.0, slope = 0.0, log = 0.0;

  // Adds a class's terms from r = z − t in double (next to the pole, and the last classes).
  void AddExact(double r, double q, bool with_log) {
    const double s = 1.0 / std::expm1(-r);  // 0 for a −inf logit
    mass += q * s;
    slope += q * s * (1.0 + s);
    if (with_log) log += q * std::log(-std::expm1(r));
  }
};

// E_j = exp(x_j − base) for the classes of whole vector pairs (the others are summed from x).
// Apart from the sums: fused with them, the pass took 35 µs per 32768 classes instead of
// 17 + 7 (one core of machine B), its chains of dependent operations too long to overlap.
void Exponentials(const float* x, float* e, int64_t n, double base) {
  // x − base in float as (x − b) − b', b + b' the base in two floats.
  const float base_f = static_cast<float>(base);
  const V8f vbase = Splat8(base_f);
  const V8f vrest = Splat8(static_cast<float>(base - static_cast<double>(base_f)));
  for (int64_t j = 0; j + 16 <= n; j += 16) {
    const V8f a = Exp((Load8(x + j) - vbase) - vrest), b = Exp((Load8(x + j + 8) - vbase) - vrest);
    std::memcpy(e + j, &a, sizeof(a));
    std::memcpy(e + j + 8, &b, sizeof(b));
  }
}

// One pass over the row at the root t (frame of the row max m) from E (Exponentials at
// m + start_t): the sums, with the value's when `with_log`. Classes next to the pole are marked per
// sixteen (a byte each) and summed after the vector loop from the logits x, as are the last
// n % 16.
template <bool shared_q, bool with_log>
JsSums Accumulate(const float* x, const float* e, const float* q, uint8_t* marks, int64_t n,
                  double m, double start_t, double t) {
  const V8f c = Splat8(static_cast<float>(std::exp(start_t - t)));
  const V8f zero = Splat8(0.0f), one = Splat8(1.0f), near = Splat8(kNearPole);
  V4d totals[3] = {Splat(0.0), Splat(0.0), Splat(0.0)};
  int64_t j = 0;
  while (j + 16 <= n) {
    V8f sums[2][3];
    for (auto& set : sums) {
      for (V8f& v : set) v = zero;
    }
    const int64_t stop = std::min(n - n % 16, j + kFlush);
    for (; j < stop; j += 16) {
      V8i pole[2];
      for (int h = 0; h < 2; ++h) {
        V8f v = c * Load8(e + j + 8 * h);  // e^r
        pole[h] = v > near;
        v = pole[h] ? zero : v;
        const V8f s = v / (one - v);
        V8f w = s, slope = s + s * s, lg = zero;
        if constexpr (with_log) lg = Log1mx(v);
        if constexpr (!shared_q) {
          const V8f qv = Load8(q + j + 8 * h);
          w *= qv;
          slope *= qv;
          if constexpr (with_log) lg *= qv;
        }
        sums[h][0] += w;
        sums[h][1] += slope;
        if constexpr (with_log) sums[h][2] += lg;
      }
      marks[j / 16] = Bits8(pole[0] | pole[1]) != 0;
    }
    for (int i = 0; i < 3; ++i) {
      const V8f pair = sums[0][i] + sums[1][i];
      totals[i] += ToDouble(V4f{pair[0], pair[1], pair[2], pair[3]}) +
                   ToDouble(V4f{pair[4], pair[5], pair[6], pair[7]});
    }
  }
  JsSums out;
  for (int lane = 0; lane < 4; ++lane) {
    out.mass += totals[0][lane];
    out.slope += totals[1][lane];
    out.log += totals[2][lane];
  }
  // The classes next to the pole, from r = (x − m) − t in double: x − m is exact, and a root
  // 1e-20 above the max (a tiny q there) is not lost in m + t.
  for (int64_t g = 0; g < j / 16; ++g) {
    if (!marks[g]) continue;
    for (int64_t i = 16 * g; i < 16 * g + 16; ++i) {
      if (c[0] * e[i] > kNearPole) {
        const double r = (static_cast<double>(x[i]) - m) - t;
        out.AddExact(r, shared_q ? 1.0 : static_cast<double>(q[i]), with_log);
      }
    }
  }
  for (; j < n; ++j) {
    out.AddExact((static_cast<double>(x[j]) - m) - t, shared_q ? 1.0 : static_cast<double>(q[j]),
                 with_log);
  }
  return out;
}

template <bool shared_q>
JsSums Pass(const float* x, const float* e, const float* q, uint8_t* marks, int64_t n, double m,
            double start_t, double t, bool with_log) {
  return with_log ? Accumulate<shared_q, true>(x, e, q, marks, n, m, start_t, t)
                  : Accumulate<shared_q, false>(x, e, q, marks, n, m, start_t, t);
}

// A thread's buffers: the row's exponentials and the marks of its classes next to the pole.
struct Buffers {
  std::vector<float> e;
  std::vector<uint8_t> marks;
};

template <bool shared_q>
RowResult SolveRow(const RowProblem& p, int64_t row, Buffers& buffers) {
  const int64_t k = p.layout.classes;
  const float* x = p.theta + row * k;
  const float* qrow = p.q + p.layout.QRowOffset(row);
  const RowStart start = ScanRow<shared_q>(x, qrow, k);
  if (start.Nan() || start.Empty()) return start.Degenerate();
  const double m = start.max, q_total = start.QTotal();
  // Shared q multiplies the sums once, at the end.
  const double q_scale = shared_q ? static_cast<double>(qrow[0]) : 1.0;

  // The bracket (frame of the row max): −f'_rel(1 / q_top) = log1p(q_top), the argmax alone
  // has mass 1; −f'_rel(1 / Q) = log1p(Q), no class has more than its share.
  double hi = std::log1p(q_total);
  double lo = LowerBound(start, std::log1p(start.QTop()), hi);
  buffers.e.resize(k);
  buffers.marks.resize(k / 16 + 1);
  // The exponentials are taken at the lower bound, which the iterates never go below:
  // e^r = exp(start_t − t) E ≤ E.
  const double start_t = lo;

  double t = lo, t_last = lo, mass = 0.0;
  bool with_log = false;
  JsSums s;
  Exponentials(x, buffers.e.data(), k, m + start_t);
  for (int it = 0; it < kMaxIterations; ++it) {
    s = Pass<shared_q>(x, buffers.e.data(), shared_q ? nullptr : qrow, buffers.marks.data(), k, m,
                       start_t, t, with_log);
    t_last = t;
    mass = q_scale * s.mass;
    if (mass >= 1.0) lo = t;
    if (mass <= 1.0) hi = t;
    if (mass == 1.0) break;
    // Newton on G = f'(S / Q) − f'(1 / Q) = log1p(Q) − log1p(Q / S), G' = −f''(S / Q) S' / Q
    // with f''(u) = 1 / (u (u + 1)).
    const double step = (std::log1p(q_total) - std::log1p(q_total / mass)) * mass *
                        (mass + q_total) / (q_total * q_scale * s.slope);
    double next = t + step;
    const bool converged =
        std::abs(mass - 1.0) <= kMassTolerance || std::abs(step) <= kStepTolerance * std::abs(t);
    if (!(std::isfinite(next) && next > lo && next < hi) && !converged) next = 0.5 * (lo + hi);
    t = next;
    if (converged) break;
    with_log = std::abs(mass - 1.0) <= kValueWithin;
  }
  if (!with_log) {  // the last pass had not expected to be the last
    s = Pass<shared_q>(x, buffers.e.data(), shared_q ? nullptr : qrow, buffers.marks.data(), k, m,
                       start_t, t, true);
    t_last = t;
    mass = q_scale * s.mass;
  }
  // Σ q (f*(z − t) + f(0)) = −Σ q log(1 − e^r), to first order from the last pass: its
  // derivative in t is −Σ q s = −S.
  const double excess = -q_scale * s.log - mass * (t - t_last);
  return Framed(m, t, q_total, excess);
}

template <bool shared_q>
void SolveRows(const RowProblem& p, int64_t begin, int64_t end) {
  thread_local Buffers buffers;
  for (int64_t row = begin; row < end; ++row) p.out.Set(row, SolveRow<shared_q>(p, row, buffers));
}

ffi::Error JsRootImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> theta, ffi::Buffer<ffi::F32> q,
                      ffi::ResultBuffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> t,
                      ffi::ResultBuffer<ffi::F32> q_sum, ffi::ResultBuffer<ffi::PRED> empty,
                      ffi::ResultBuffer<ffi::F32> excess) {
  RowProblem p;
  if (ffi::Error error =
          MakeRowProblem("fdiv_js_root", theta, q, shift, t, q_sum, empty, excess, &p);
      error.failure()) {
    return error;
  }
  const bool shared_q = p.layout.q_class_stride == 0;
  ParallelRows(pool, p.layout.rows, [&p, shared_q](int64_t begin, int64_t end) {
    shared_q ? SolveRows<true>(p, begin, end) : SolveRows<false>(p, begin, end);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace fdiv_cpu

XLA_FFI_DEFINE_HANDLER_SYMBOL(FdivJsRoot, fdiv_cpu::JsRootImpl, fdiv_cpu::RootBinding());
