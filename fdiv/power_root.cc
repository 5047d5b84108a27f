// The root of the f-softargmax for the generators whose map is a power law, on CPU.
//
// For α-divergences with an integer exponent 1 / (α − 1) and χ² (sparse: power 1 to 4), and
// for reverse KL, Hellinger and α ∈ {1/2, 2/3, 3/4} (a pole: power −1 to −4), the mass of a
// class at the anchored root t is
//
//     p_j = q_j · coef · |z_j − t|^power,        z_j = θ_j − max θ,
//
// on z_j > t for the sparse laws (0 below), and for every class for the poles (t > 0 ≥ z_j),
// and t solves S(t) = Σ_j p_j = 1. XLA:CPU spends about a cycle per element on every pass of
// the JAX solvers over a row; here a row stays in the core's cache while it is searched, the
// sums are taken in double precision (the sparse laws' in float over blocks of 256 classes,
// then in double: see Accumulate), so that the root needs none of the float32 frames of
// root_finding.py, and the classes that can no longer carry mass are dropped as the search
// proceeds. See fdiv/cpu_kernel.py for how it is built and when it is used.
//
// Per row: one pass over the logits for the max, the NaN test and Jensen's lower bound of the
// root (for the sparse laws with a shared q, also the sums at a guess of the root from the
// thread's last row: a better lower bound when it lies below the root, see SolveRow); then
// safeguarded Newton on G(t) = S(t)^(1/power) − 1, monotone in t and convex (sparse)
// or concave (poles) as a power mean of affine functions, so that from a lower bound the
// iterates increase monotonically to the root. For the sparse laws every iterate is a lower
// bound, and the classes at or below it carry no mass at the root (once they are most of the
// row, the others are copied to a buffer that the next passes read); a step from a point with
// the root's support is exact for power 1. For power 2 (α = 1.5) a pass also gives an upper
// bound of the root (the root of the quadratic S is on the support above the iterate), and the
// next pass lists the classes between its iterate and that bound (up to 1024): with them the
// root is exact after that pass (WindowRoot); random rows of 32768 classes take one pass after
// the first for logits N(0, 1) and 2·N(0, 1) with uniform q (a window of ~500 classes for the
// latter), one or two with unit q.

#include <cmath>

#include "cpu_rows.h"

namespace fdiv_cpu {
namespace {

// The sparse laws' sums are of float r (Accumulate), whose rounding moves the root by about an
// ulp of the logits near it: steps below this, relative to |max θ| + |t|, are that noise.
constexpr double kFloatResolution = 0x1p-22;
// Reverse KL's passes sum the value's log once the mass before them is this close to 1 (see
// PoleRoot).
constexpr double kLogWithin = 1e-4;

// The classes between the iterate t and an upper bound `top` of the root (power 2): with the
// moments above t they give the exact root in the same pass (see WindowRoot). At most
// kWindow classes; more and the window is unusable (count > kWindow).
constexpr int kWindow = 1024;
struct Window {
  double top = -kInf;  // in the frame of z
  int count = 0;
  double d[kWindow], q[kWindow];  // r = z − t of each class, and its q
  // One byte per step of sixteen classes of the vector loop, nonzero where one may be in the
  // window: expanded after the loop (a call in the loop would keep its sums in memory, and a
  // count of steps would chain the loop's iterations). Per thread (Buffers), n / 16 bytes.
  uint8_t* marks = nullptr;

  void Add(double r, double weight) {
    if (count < kWindow) {
      d[count] = r;
      q[count] = weight;
    }
    ++count;
  }
};

// Sums over the classes above t, for z = x − offset and r = z − t: the moments
// m[i] = Σ q r^i for i ≤ power + 1 and how many classes they cover; with `windowed`, the
// classes in the window (t, window->top] are listed too. x is the row, or the buffer of its
// classes still above the lower bound (the logits themselves); q is per class unless shared.
//
// r is taken in float as (x − e) − e', with e + e' the edge offset + t in two floats: exact
// where x is within a factor 2 of e (the classes next to the edge, whose sign decides the
// support), within an ulp of r elsewhere. The moments are summed in float over blocks of
// kFlush classes (16 terms per lane) and in double across blocks: eight classes per vector
// instead of four, at the accuracy of double sums of float r (the JAX solvers' r is float).
// Only classes above t count, and t is at least the argmax bound, so r ≤ (coef q_max)^(−1/power)
// and q r^(power + 1) overflows float only for a q at the row max below ~1e-31 (power 4).
template <int power>
struct Sums {
  double m[power + 2] = {};
  int64_t count = 0;
};

// One vector of eight classes of Accumulate's loop: adds its moments and count, and returns
// which of its classes lie above t (r > 0).
template <int power, bool shared_q>
inline V8i AddGroup(V8f v, const float* q, V8f edge, V8f edge_rest, V8f* moments, V8i& count) {
  const V8f zero = Splat8(0.0f);
  const V8f r = (v - edge) - edge_rest;
  const V8i in = r > zero;
  V8f w = in ? Splat8(1.0f) : zero;
  if constexpr (!shared_q) w = in ? Load8(q) : zero;
  const V8f rp = in ? r : zero;
  for (int i = 0; i < power + 2; ++i) {
    moments[i] += w;
    w *= rp;
  }
  count -= in;  // a true comparison is −1
  return in;
}

// The float r of a class, as AddGroup takes it.
inline float Excess(float x, float edge, float edge_rest) { return (x - edge) - edge_rest; }

// The row's max and the sum of its logits (NaN when it holds a NaN, or +inf and −inf).
struct RowScan {
  double max = -kInf, sum = 0.0;
};

// With `scan`, the pass also takes the row's max and sum (for the first pass, from memory, which
// leaves time for the moments).
template <int power, bool shared_q, bool windowed, bool scan = false>
Sums<power> Accumulate(const float* x, const float* q, int64_t n, double offset, double t,
                       Window* window, RowScan* row = nullptr) {
  const double edge = offset + t;  // r = x − edge
  const float edge_f = static_cast<float>(edge);
  const float edge_rest = static_cast<float>(edge - static_cast<double>(edge_f));
  const double top = windowed ? offset + window->top : -kInf;
  // The window's test in float only marks the vectors to look at: rounded up, it misses no
  // class at or below top, and the classes are then tested in double.
  float top_f = static_cast<float>(top);
  if (static_cast<double>(top_f) < top) top_f = std::nextafter(top_f, kInf);
  const V8f vedge = Splat8(edge_f), vrest = Splat8(edge_rest), vtop = Splat8(top_f);
  V4d totals[power + 2];
  for (V4d& v : totals) v = Splat(0.0);
  V8i count[2] = {V8i{}, V8i{}};
  V8f row_max[2] = {Splat8(-std::numeric_limits<float>::infinity()),
                    Splat8(-std::numeric_limits<float>::infinity())};
  V4d row_sum[2] = {Splat(0.0), Splat(0.0)};
  int64_t j = 0;
  while (j + 16 <= n) {
    // Two sets of sums, one per vector of a pair: each sum waits on one addition per pair.
    V8f moments[2][power + 2];
    for (auto& set : moments) {
      for (V8f& v : set) v = Splat8(0.0f);
    }
    const int64_t stop = std::min(n - n % 16, j + kFlush);
    for (; j < stop; j += 16) {
      const V8f a = Load8(x + j), b = Load8(x + j + 8);
      const V8i in_a = AddGroup<power, shared_q>(a, q + j, vedge, vrest, moments[0], count[0]);
      const V8i in_b = AddGroup<power, shared_q>(b, q + j + 8, vedge, vrest, moments[1], count[1]);
      if constexpr (windowed) {
        window->marks[j / 16] = Bits8((in_a & (a <= vtop)) | (in_b & (b <= vtop))) != 0;
      }
      if constexpr (scan) {  // NaN never compares greater: the sum reports it
        row_max[0] = a > row_max[0] ? a : row_max[0];
        row_max[1] = b > row_max[1] ? b : row_max[1];
        row_sum[0] +=
            ToDouble(V4f{a[0], a[1], a[2], a[3]}) + ToDouble(V4f{a[4], a[5], a[6], a[7]});
        row_sum[1] +=
            ToDouble(V4f{b[0], b[1], b[2], b[3]}) + ToDouble(V4f{b[4], b[5], b[6], b[7]});
      }
    }
    for (int i = 0; i < power + 2; ++i) {
      const V8f pair = moments[0][i] + moments[1][i];
      totals[i] += ToDouble(V4f{pair[0], pair[1], pair[2], pair[3]}) +
                   ToDouble(V4f{pair[4], pair[5], pair[6], pair[7]});
    }
  }
  Sums<power> out;
  for (int lane = 0; lane < 8; ++lane) out.count += count[0][lane] + count[1][lane];
  if constexpr (scan) {
    for (int lane = 0; lane < 8; ++lane) {
      row->max = std::max({row->max, static_cast<double>(row_max[0][lane]),
                           static_cast<double>(row_max[1][lane])});
    }
    for (int lane = 0; lane < 4; ++lane) row->sum += row_sum[0][lane] + row_sum[1][lane];
  }
  for (int i = 0; i < power + 2; ++i) {
    for (int lane = 0; lane < 4; ++lane) out.m[i] += totals[i][lane];
  }
  if constexpr (windowed) {
    window->count = 0;
    for (int64_t g = 0; g < j / 16 && window->count <= kWindow; ++g) {
      if (!window->marks[g]) continue;
      for (int64_t start = 16 * g; start < 16 * g + 16; start += 8) {
        const V8f v = Load8(x + start), r = (v - vedge) - vrest;
        for (unsigned bits = Bits8((r > Splat8(0.0f)) & (v <= vtop)); bits; bits &= bits - 1) {
          const int lane = __builtin_ctz(bits);
          if (static_cast<double>(v[lane]) <= top) {
            window->Add(r[lane], shared_q ? 1.0 : static_cast<double>(q[start + lane]));
          }
        }
      }
    }
  }
  for (; j < n; ++j) {
    if constexpr (scan) {
      if (x[j] > row->max) row->max = x[j];
      row->sum += x[j];
    }
    const float r_f = Excess(x[j], edge_f, edge_rest);
    if (r_f > 0.0f) {
      const double r = r_f;
      double w = shared_q ? 1.0 : static_cast<double>(q[j]);
      if (windowed && static_cast<double>(x[j]) <= top) window->Add(r, w);
      for (int i = 0; i < power + 2; ++i) {
        out.m[i] += w;
        w *= r;
      }
      ++out.count;
    }
  }
  return out;
}

// Σ q (r − u)^(power + 1) over the classes of the moments m (taken at r), by the binomial
// expansion: the value's sum at a root u past the last pass, when no class left the support.
template <int power>
double ShiftedTopMoment(const double* m, double u) {
  double total = 0.0, binomial = 1.0, minus_u = 1.0;
  for (int i = power + 1; i >= 0; --i) {  // the term in m[i] carries (−u)^(power + 1 − i)
    total += binomial * minus_u * m[i];
    binomial = binomial * static_cast<double>(i) / static_cast<double>(power + 2 - i);
    minus_u *= -u;
  }
  return total;
}

// The root t + u from the moments m above t (power 2, shared weights scaled by coef) and the
// classes of the window (t, top], top at least the root: the classes above the window are in
// the root's support, and S(u) = coef Σ q (r − u)_+² is convex and decreasing, with S(0) ≥ 1.
// Newton from u = 0 (over the window's list) increases monotonically to the root; at each
// iterate the quadratic of its support has its smaller root v at or above the root, and v is
// the root once no class of the window lies in (u, v]. On success, returns true with u and the
// moments of the root's support (for the value); false if the window holds too many classes.
bool WindowRoot(double t, double coef, const Window& window, double* m, double* u_out) {
  if (window.count > kWindow || !(window.top > t)) return false;
  const int count = window.count;
  double above[4] = {m[0], m[1], m[2], m[3]};  // the classes above the window
  for (int i = 0; i < count; ++i) {
    const double d = window.d[i], q = window.q[i];
    above[0] -= q;
    above[1] -= q * d;
    above[2] -= q * d * d;
    above[3] -= q * d * d * d;
  }
  double u = 0.0;
  for (int it = 0; it < kMaxIterations; ++it) {
    double s[4] = {above[0], above[1], above[2], above[3]};  // the support at u
    for (int i = 0; i < count; ++i) {  // branch-free: the classes above u are scattered
      const double d = window.d[i], q = window.d[i] > u ? window.q[i] : 0.0;
      s[0] += q;
      s[1] += q * d;
      s[2] += q * d * d;
      s[3] += q * d * d * d;
    }
    const double c = s[2] - 1.0 / coef, disc = s[1] * s[1] - s[0] * c;
    if (!(s[0] > 0.0 && c >= 0.0 && disc >= 0.0)) return false;
    const double v = c / (s[1] + std::sqrt(disc));
    int between = 0;
    for (int i = 0; i < count; ++i) between += (window.d[i] > u) & (window.d[i] <= v);
    if (between == 0) {
      for (int i = 0; i < 4; ++i) m[i] = s[i];
      *u_out = v;
      return true;
    }
    // Newton on G = S^(1/2) − 1 from u, as SparseRoot's passes.
    const double mass = coef * (s[2] - 2.0 * u * s[1] + u * u * s[0]);
    const double next = u + (mass - std::sqrt(mass)) / (coef * (s[1] - u * s[0]));
    if (!(next > u && next < v)) return false;
    u = next;
  }
  return false;
}

// Copies the groups of four classes with one above `floor` (z = x − offset) to the front of
// out_x (and out_q); returns how many classes it copied. The other classes of a kept group
// are at or below the lower bound and carry no mass. In place when out_x is x. Branch-free
// per group: the groups kept are scattered, a pattern no branch predictor learns.
template <bool shared_q>
int64_t Compact(const float* x, const float* q, int64_t n, double offset, double floor,
                float* out_x, float* out_q) {
  const V4d vfloor = Splat(offset + floor);
  int64_t kept = 0, j = 0;
  for (; j + 4 <= n; j += 4) {
    const bool any = Any(Load4(x + j) > vfloor);
    std::memmove(out_x + kept, x + j, 4 * sizeof(float));
    if constexpr (!shared_q) std::memmove(out_q + kept, q + j, 4 * sizeof(float));
    kept += any ? 4 : 0;
  }
  for (; j < n; ++j) {
    const bool any = static_cast<double>(x[j]) > offset + floor;
    out_x[kept] = x[j];
    if constexpr (!shared_q) out_q[kept] = q[j];
    kept += any ? 1 : 0;
  }
  return kept;
}

struct Problem : RowProblem {
  double coef;
  int64_t power;
};

// The buffers of the classes still above the lower bound (and their q when q varies by
// class), and of the window's marks: one set per thread, kept across calls (a row's buffer,
// 128 KiB at 32768 classes, allocated anew for each batch of rows is mapped and faulted in
// each time).
struct Buffers {
  std::vector<float> x, q;
  std::vector<uint8_t> marks;  // Window::marks
};

// What a batch of rows carries from row to row: the thread's buffers, and the root of the last
// row (shared q, a sparse law) in the logits' frame with how much it moved from row to row (a
// running mean), below which the next row's first pass takes its guess. Per batch, not per
// thread: a row's result must not depend on which thread solved the rows before it.
struct Scratch {
  Buffers& buffers;
  double last_edge = kNaN, drift = 0.0;
};

// The search of the sparse power laws (power > 0) from the bracket [lo, hi] in the frame of
// the row max m (with the sums at lo if the first pass took them); coef includes a q shared by
// the classes. Sets the root and the value's sum.
template <int power, bool shared_q>
void SparseRoot(const float* x, const float* q, int64_t k, double m, double coef, double lo,
                double hi, const Sums<power>* at_lo, Scratch& scratch, double* root,
                double* excess) {
  // The passes read the row until the classes above the lower bound are fewer than half of
  // it (unit q: a few percent after one pass; uniform q: never); those are then copied to a
  // buffer, which shrinks the same way.
  const float* xs = x;
  const float* qs = shared_q ? nullptr : q;
  int64_t n = k;
  double t = lo, t_last = lo;
  const double inv_power = 1.0 / power;
  Sums<power> last;
  Window window;
  if constexpr (power == 2) {
    scratch.buffers.marks.resize(k / 16 + 1);
    window.marks = scratch.buffers.marks.data();
  }
  for (int it = 0; it < kMaxIterations; ++it) {
    const bool between = power == 2 && window.top > t;
    const Sums<power> s = it == 0 && at_lo != nullptr ? *at_lo  // taken by the first pass
                          : between ? Accumulate<power, shared_q, true>(xs, qs, n, m, t, &window)
                                    : Accumulate<power, shared_q, false>(xs, qs, n, m, t, nullptr);
    last = s;
    t_last = t;
    const double mass = coef * s.m[power];
    if (mass >= 1.0) lo = t;
    if (mass <= 1.0) hi = t;
    if (mass == 1.0) break;
    if constexpr (power == 2) {
      // With the window's classes the root follows from this pass's moments (WindowRoot). The
      // quadratic that S is on the support above t, coef (m2 − 2 u m1 + m0 u²), has its
      // smaller root above the root where classes leave the support before it (it exceeds S
      // there): the top of the next pass's window.
      double u;
      if (between && WindowRoot(t, coef, window, last.m, &u)) {
        t += u;
        break;
      }
      const double a = s.m[0], b = s.m[1], c = s.m[2] - 1.0 / coef;
      const double disc = b * b - a * c;
      const bool real = disc >= 0.0 && a > 0.0 && c >= 0.0;
      window.top = real ? std::min(hi, t + c / (b + std::sqrt(disc))) : -kInf;
    }
    // Newton on G = S^(1/power) − 1, with S' = −coef · power · m[power − 1]: −G / G' =
    // (S − S^(1 − 1/power)) / (coef · m[power − 1]).
    const double step = (mass - std::pow(mass, 1.0 - inv_power)) / (coef * s.m[power - 1]);
    double next = t + step;
    const bool converged =
        std::abs(step) <= std::max(kStepTolerance * std::abs(t),
                                   kFloatResolution * (std::abs(m) + std::abs(t)));
    if (!(std::isfinite(next) && next > lo && next < hi) && !converged) next = 0.5 * (lo + hi);
    t = next;
    if (converged) break;
    // The classes above t are above the new lower bound: compact once they are few.
    if (2 * s.count < n && lo == t_last) {
      Buffers& buffers = scratch.buffers;
      if (xs == x) {
        buffers.x.resize(n);
        if constexpr (!shared_q) buffers.q.resize(n);
      }
      n = Compact<shared_q>(xs, qs, n, m, lo, buffers.x.data(), buffers.q.data());
      xs = buffers.x.data();
      if constexpr (!shared_q) qs = buffers.q.data();
    }
  }
  // Σ q (f*(θ − τ) + f(0)) = coef / (power + 1) · Σ q r^(power + 1), for the value.
  *excess = coef / (power + 1) * ShiftedTopMoment<power>(last.m, t - t_last);
  *root = t;
}

// Sums over all the classes of a pole power law (power < 0), for u = t − z > 0: Σ q u^power
// (the mass), Σ q u^(power − 1) (its slope) and the value's: Σ q u^(power + 1) for power ≤ −2,
// Σ q log u for power = −1 (when asked for: a pass with a log per class costs twice as much).
struct PoleSums {
  double mass = 0.0, slope = 0.0, value = 0.0;
};

// log(u) = e log 2 + log m for positive finite u, eight floats at a time, as its two parts (e
// exact, so that summed apart it costs no rounding): u = 2^e m with m in [√½, √2], and
// log m = log1p(f), f = m − 1, as f − f²/2 + f³ P(f) with P of degree 7 fitted on that interval
// (least squares at Chebyshev nodes; error below 4e-8 evaluated in float). No division: the
// pole's pass already keeps the divider busy (1/u).
inline void LogParts(V8f u, V8f* e, V8f* log_m) {
  const V8i bits = reinterpret_cast<V8i>(u);
  V8i exponent = ((bits >> 23) & 0xff) - 127;
  V8f m = reinterpret_cast<V8f>((bits & 0x7fffff) | 0x3f800000);  // in [1, 2)
  const V8i above = m > Splat8(static_cast<float>(M_SQRT2));  // −1 where true
  m = above ? m * Splat8(0.5f) : m;
  exponent -= above;
  const V8f f = m - Splat8(1.0f), f2 = f * f;
  V8f p = Splat8(-0.0811729f);
  p = p * f + Splat8(0.12720612f);
  p = p * f + Splat8(-0.1297021f);
  p = p * f + Splat8(0.14200851f);
  p = p * f + Splat8(-0.16642316f);
  p = p * f + Splat8(0.20001529f);
  p = p * f + Splat8(-0.25000295f);
  p = p * f + Splat8(0.33333328f);
  *e = __builtin_convertvector(exponent, V8f);
  *log_m = (f - Splat8(0.5f) * f2) + (f2 * f) * p;
}

template <int power, bool shared_q>
inline V4d AddPoleGroup(V4d v, const float* q, V4d offset, V4d t, V4d* sums) {
  // u = (offset − v) + t: offset − v is exact, and a root 1e-20 above the max is not lost in
  // offset + t.
  const V4d u = (offset - v) + t;
  const V4d inv = Splat(1.0) / u;  // 0 for a −inf logit
  V4d w = Splat(1.0);
  if constexpr (!shared_q) w = Load4(q);
  V4d value = w;  // w u^(power + 1) after the loop
  for (int i = 0; i < -power - 1; ++i) value *= inv;
  const V4d mass = value * inv;
  sums[0] += mass;
  sums[1] += mass * inv;
  if constexpr (power != -1) sums[2] += value;
  return u;
}

// Adds Σ q log u of eight classes with q per class (in float: the JAX path's precision) to the
// sums of their exponents and mantissas; the f* of a −inf logit (u = inf) is dropped.
template <bool shared_q>
inline void AddLogs(V4d u_a, V4d u_b, const float* q, V4d* exponents, V4d* mantissas) {
  const V4f a = __builtin_convertvector(u_a, V4f), b = __builtin_convertvector(u_b, V4f);
  const V8f u = __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7);
  V8f e, log_m;
  LogParts(u, &e, &log_m);
  V8f w = u < Splat8(std::numeric_limits<float>::infinity()) ? Splat8(1.0f) : Splat8(0.0f);
  if constexpr (!shared_q) w *= Load8(q);
  e *= w;
  log_m *= w;
  exponents[0] += ToDouble(V4f{e[0], e[1], e[2], e[3]});
  exponents[1] += ToDouble(V4f{e[4], e[5], e[6], e[7]});
  mantissas[0] += ToDouble(V4f{log_m[0], log_m[1], log_m[2], log_m[3]});
  mantissas[1] += ToDouble(V4f{log_m[4], log_m[5], log_m[6], log_m[7]});
}

// Moves the binary exponent of each lane of a product into `exponents`, leaving the mantissa
// in [1, 2): a product of at most four factors in [1e-45, 1e39] (a float u) between two calls
// stays within double's range.
inline void TakeExponents(V4d* product, V4l* exponents) {
  const V4l bits = reinterpret_cast<V4l>(*product);
  *exponents += ((bits >> 52) & 0x7ff) - 1023;
  *product = reinterpret_cast<V4d>((bits & 0xfffffffffffffLL) | 0x3ff0000000000000LL);
}

// The passes over all the classes of a row. With `with_log` (power −1 only), also Σ q log u:
// with q per class from the logs of AddLogs, with a shared q as the log of the product of the u
// (a multiplication per class, exponents taken out every four; the logs cost 33 µs per 32768
// classes on one core, the product ~2).
template <int power, bool shared_q, bool with_log>
PoleSums AccumulatePole(const float* x, const float* q, int64_t n, double offset, double t) {
  const V4d voffset = Splat(offset), vt = Splat(t), inf = Splat(kInf), one = Splat(1.0);
  V4d sums[2][3], exponents[2], mantissas[2], product[2];
  V4l product_exponents[2] = {V4l{}, V4l{}};
  for (auto& set : sums) {
    for (V4d& v : set) v = Splat(0.0);
  }
  for (int i = 0; i < 2; ++i) {
    exponents[i] = mantissas[i] = Splat(0.0);
    product[i] = one;
  }
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const V4d u_a = AddPoleGroup<power, shared_q>(Load4(x + j), q + j, voffset, vt, sums[0]);
    const V4d u_b =
        AddPoleGroup<power, shared_q>(Load4(x + j + 4), q + j + 4, voffset, vt, sums[1]);
    if constexpr (power == -1 && with_log && shared_q) {
      product[0] *= u_a < inf ? u_a : one;  // the f* of a −inf logit (u = inf) is dropped
      product[1] *= u_b < inf ? u_b : one;
      if ((j & 24) == 24) {
        TakeExponents(&product[0], &product_exponents[0]);
        TakeExponents(&product[1], &product_exponents[1]);
      }
    } else if constexpr (power == -1 && with_log) {
      AddLogs<shared_q>(u_a, u_b, q + j, exponents, mantissas);
    }
  }
  PoleSums out;
  for (int set = 0; set < 2; ++set) {
    for (int lane = 0; lane < 4; ++lane) {
      out.mass += sums[set][0][lane];
      out.slope += sums[set][1][lane];
      out.value += sums[set][2][lane];
      if constexpr (power == -1 && with_log && shared_q) {
        out.value += M_LN2 * static_cast<double>(product_exponents[set][lane]) +
                     std::log(product[set][lane]);
      } else if constexpr (power == -1 && with_log) {
        out.value += M_LN2 * exponents[set][lane] + mantissas[set][lane];
      }
    }
  }
  for (; j < n; ++j) {
    const double u = (offset - static_cast<double>(x[j])) + t, inv = 1.0 / u;
    const double w = shared_q ? 1.0 : static_cast<double>(q[j]);
    double value = w;
    for (int i = 0; i < -power - 1; ++i) value *= inv;
    out.mass += value * inv;
    out.slope += value * inv * inv;
    if constexpr (power == -1 && with_log) {
      if (u < kInf) out.value += w * std::log(u);
    } else if constexpr (power != -1) {
      out.value += value;
    }
  }
  return out;
}

template <int power, bool shared_q>
PoleSums PolePass(const float* x, const float* q, int64_t n, double offset, double t,
                  bool with_log) {
  return with_log ? AccumulatePole<power, shared_q, true>(x, q, n, offset, t)
                  : AccumulatePole<power, shared_q, false>(x, q, n, offset, t);
}

// The search of the pole power laws (power < 0: reverse KL, Hellinger, α ∈ {1/2, 2/3, 3/4}),
// whose mass is positive for every class (u = t − z > 0): safeguarded Newton on
// G = S^(1/power) − 1, concave and increasing, so that from the lower bound lo the iterates
// increase monotonically to the root. Every pass reads the whole row. Sets the root and the
// value's sum: Σ q (f*(θ − τ) + f(0)) = coef / (−power − 1) · Σ q u^(power + 1) for power ≤ −2,
// and Σ q f*(θ − τ) = −coef Σ q log u for power = −1 (reverse KL, whose f(0) is infinite), taken
// by the pass expected to be the last (or one more pass at the root).
template <int power, bool shared_q>
void PoleRoot(const float* x, const float* q, int64_t k, double m, double coef, double lo,
              double hi, double* root, double* excess) {
  const double inv_power = 1.0 / power;
  double t = lo;
  PoleSums s;
  double t_last = lo;
  bool with_log = false;
  for (int it = 0; it < kMaxIterations; ++it) {
    s = PolePass<power, shared_q>(x, q, k, m, t, with_log);
    t_last = t;
    const double mass = coef * s.mass;
    if (mass >= 1.0) lo = t;
    if (mass <= 1.0) hi = t;
    if (mass == 1.0) break;
    // S' = coef · power · Σ q u^(power − 1): −G / G' = −(S − S^(1 − 1/power)) / (coef · slope).
    const double step = -(mass - std::pow(mass, 1.0 - inv_power)) / (coef * s.slope);
    double next = t + step;
    const bool converged = std::abs(step) <= kStepTolerance * std::abs(t);
    if (!(std::isfinite(next) && next > lo && next < hi) && !converged) next = 0.5 * (lo + hi);
    t = next;
    if (converged) break;
    // Newton squares the mass's error: from this close, the next step is below the tolerance.
    with_log = power == -1 && std::abs(mass - 1.0) <= kLogWithin;
  }
  if (power == -1 && !with_log) {  // the last pass had not expected to be the last
    s = PolePass<power, shared_q>(x, q, k, m, t, true);
    t_last = t;
  }
  // The value's sum at the root, to first order from the last pass: d u^(power + 1) / dt =
  // (power + 1) u^power, d log u / dt = u^(−1).
  *excess = power == -1
                ? -coef * (s.value + (t - t_last) * s.mass)
                : coef / (-power - 1) * (s.value + (power + 1) * (t - t_last) * s.mass);
  *root = t;
}

template <int power, bool shared_q>
RowResult SolveRow(const Problem& p, int64_t row, Scratch& scratch) {
  const int64_t k = p.layout.classes;
  const float* x = p.theta + row * k;
  const float* qrow = p.q + p.layout.QRowOffset(row);
  // Shared q multiplies the sums once, at the end.
  const double q_shared = qrow[0];
  const double q_scale = shared_q ? q_shared : 1.0;

  // Pass 1: the max, Q, q at the argmax, and Σ q θ for Jensen's bound (NaN or +inf: NaN row).
  // The sparse laws' first pass also takes the sums at a guess of the root from the thread's
  // last rows (free: the pass waits on memory); a guess below the root is a lower bound better
  // than Jensen's, which saves a pass, one above it an upper bound.
  constexpr bool guessing = shared_q && power > 0;
  const bool guessed = guessing && std::isfinite(scratch.last_edge);
  const double guess = scratch.last_edge - 2.0 * scratch.drift;
  Sums<(power > 0 ? power : 1)> at_guess;
  RowStart start;
  if (guessed) {
    RowScan scan;
    at_guess = Accumulate<(power > 0 ? power : 1), true, false, true>(x, nullptr, k, 0.0, guess,
                                                                      nullptr, &scan);
    start = SharedRowStart(scan.max, scan.sum, q_shared, k);
  } else {
    start = ScanRow<shared_q>(x, qrow, k);
  }
  if (start.Nan() || start.Empty()) return start.Degenerate();
  const double m = start.max, q_total = start.QTotal();

  // The bracket of the anchored root in the frame of the row max (see bracket() in
  // root_finding.py): the argmax alone has mass 1 at lo, no class more than its share at hi.
  // The root is below the row max for the sparse laws and above it for the poles.
  const double sign = power > 0 ? -1.0 : 1.0, inv_power = 1.0 / power;
  double hi = sign * std::pow(1.0 / (p.coef * q_total), inv_power);
  double lo = LowerBound(start, sign * std::pow(1.0 / (p.coef * start.QTop()), inv_power), hi);

  double t, excess;
  if constexpr (power > 0) {
    const Sums<power>* at_lo = nullptr;
    if (guessed) {
      const double t_guess = guess - m, mass = p.coef * q_scale * at_guess.m[power];
      if (t_guess > lo && t_guess < hi) {
        if (mass >= 1.0) {
          lo = t_guess;
          at_lo = &at_guess;
        } else {
          hi = t_guess;
        }
      }
    }
    SparseRoot<power, shared_q>(x, qrow, k, m, p.coef * q_scale, lo, hi, at_lo, scratch, &t,
                                &excess);
    if constexpr (guessing) {
      const double edge = m + t;
      if (std::isfinite(scratch.last_edge)) {
        scratch.drift = 0.75 * scratch.drift + 0.25 * std::abs(edge - scratch.last_edge);
      }
      scratch.last_edge = edge;
    }
  } else {
    PoleRoot<power, shared_q>(x, qrow, k, m, p.coef * q_scale, lo, hi, &t, &excess);
  }

  return Framed(m, t, q_total, excess);
}

template <int power, bool shared_q>
void SolveRows(const Problem& p, int64_t begin, int64_t end) {
  thread_local Buffers buffers;
  Scratch scratch{buffers};
  for (int64_t row = begin; row < end; ++row) {
    p.out.Set(row, SolveRow<power, shared_q>(p, row, scratch));
  }
}

template <bool shared_q>
void SolveRange(const Problem& p, int64_t begin, int64_t end) {
  switch (p.power) {
    case -4:
      return SolveRows<-4, shared_q>(p, begin, end);
    case -3:
      return SolveRows<-3, shared_q>(p, begin, end);
    case -2:
      return SolveRows<-2, shared_q>(p, begin, end);
    case -1:
      return SolveRows<-1, shared_q>(p, begin, end);
    case 1:
      return SolveRows<1, shared_q>(p, begin, end);
    case 2:
      return SolveRows<2, shared_q>(p, begin, end);
    case 3:
      return SolveRows<3, shared_q>(p, begin, end);
    default:
      return SolveRows<4, shared_q>(p, begin, end);
  }
}

ffi::Error PowerRootImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> theta,
                         ffi::Buffer<ffi::F32> q, ffi::ResultBuffer<ffi::F32> shift,
                         ffi::ResultBuffer<ffi::F32> t, ffi::ResultBuffer<ffi::F32> q_sum,
                         ffi::ResultBuffer<ffi::PRED> empty, ffi::ResultBuffer<ffi::F32> excess,
                         double coef, int64_t power) {
  if (power == 0 || power < -4 || power > 4) {
    return ffi::Error::InvalidArgument("fdiv_power_root: power must lie in [-4, 4], not 0");
  }
  Problem p;
  if (ffi::Error error =
          MakeRowProblem("fdiv_power_root", theta, q, shift, t, q_sum, empty, excess, &p);
      error.failure()) {
    return error;
  }
  p.coef = coef;
  p.power = power;
  const bool shared_q = p.layout.q_class_stride == 0;
  ParallelRows(pool, p.layout.rows, [&p, shared_q](int64_t begin, int64_t end) {
    shared_q ? SolveRange<true>(p, begin, end) : SolveRange<false>(p, begin, end);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace fdiv_cpu

XLA_FFI_DEFINE_HANDLER_SYMBOL(FdivPowerRoot, fdiv_cpu::PowerRootImpl,
                              fdiv_cpu::RootBinding().Attr<double>("coef").Attr<int64_t>("power"));
