// The row machinery of the CPU root kernels (power_root.cc, js_root.cc): vectors of floats and
// doubles, the layout of the logits' rows and of the reference measure q against them, the
// kernels' signature and results, a row's first pass and lower bound, and the rows shared out
// to XLA's intra-op threads.

#ifndef FDIV_CPU_ROWS_H_
#define FDIV_CPU_ROWS_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

#ifdef __AVX__
#include <immintrin.h>
#endif

namespace fdiv_cpu {

namespace ffi = xla::ffi;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The kernels' Newton loops: a cap on their passes, and the step (relative to the root) below
// which Newton's next error, about its square, is negligible.
constexpr int kMaxIterations = 100;
constexpr double kStepTolerance = 1e-10;
// Sums in float are added to double sums every this many classes.
constexpr int64_t kFlush = 256;

// GCC's vector extensions, so that the passes are vectorised the same way by every compiler
// version, reductions included: four doubles (and their comparison masks), four and eight
// floats.
typedef double V4d __attribute__((vector_size(32)));
typedef int64_t V4l __attribute__((vector_size(32)));
typedef float V4f __attribute__((vector_size(16)));
typedef float V8f __attribute__((vector_size(32)));
typedef int32_t V8i __attribute__((vector_size(32)));

inline V4f LoadFloats(const float* p) {
  V4f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline V8f Load8(const float* p) {
  V8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline V4d ToDouble(V4f v) {
#ifdef __AVX__
  return reinterpret_cast<V4d>(_mm256_cvtps_pd(reinterpret_cast<__m128>(v)));  // one instruction
#else
  return __builtin_convertvector(v, V4d);  // GCC 12 converts in two halves
#endif
}

inline V4d Load4(const float* p) { return ToDouble(LoadFloats(p)); }

// Whether any lane of a comparison is true (one instruction with AVX).
inline bool Any(V4l mask) {
#ifdef __AVX__
  return _mm256_movemask_pd(reinterpret_cast<__m256d>(mask)) != 0;
#else
  return (mask[0] | mask[1] | mask[2] | mask[3]) != 0;
#endif
}

// The lanes of a comparison of floats that are true, as the bits of an integer (one
// instruction with AVX).
inline unsigned Bits8(V8i mask) {
#ifdef __AVX__
  return static_cast<unsigned>(_mm256_movemask_ps(reinterpret_cast<__m256>(mask)));
#else
  unsigned bits = 0;
  for (int lane = 0; lane < 8; ++lane) bits |= (mask[lane] != 0 ? 1u : 0u) << lane;
  return bits;
#endif
}

inline V4d Splat(double x) { return V4d{x, x, x, x}; }
inline V8f Splat8(float x) { return V8f{x, x, x, x, x, x, x, x}; }

// The rows of float32 logits [..., classes] and the strides of q (the logits' rank, each
// dimension theirs or 1) over their leading dimensions and over the classes, in elements: 0
// where q is broadcast.
struct RowLayout {
  int64_t rows = 1, classes = 0;
  std::vector<int64_t> lead, q_lead_stride;
  int64_t q_class_stride = 0;

  // The offset of a row's reference measure in q (row-major multi-index over the leading axes).
  int64_t QRowOffset(int64_t row) const {
    int64_t offset = 0;
    for (int64_t d = static_cast<int64_t>(lead.size()) - 1; d >= 0; --d) {
      offset += (row % lead[d]) * q_lead_stride[d];
      row /= lead[d];
    }
    return offset;
  }
};

// The layout of logits and q of these dimensions; an error names the kernel `name`.
inline ffi::Error MakeRowLayout(ffi::Span<const int64_t> theta_dims,
                                ffi::Span<const int64_t> q_dims, const char* name,
                                RowLayout* layout) {
  const size_t rank = theta_dims.size();
  if (rank == 0 || q_dims.size() != rank) {
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": q must have the logits' rank (>= 1)");
  }
  layout->classes = theta_dims[rank - 1];
  layout->rows = 1;
  layout->lead.assign(rank - 1, 1);
  layout->q_lead_stride.assign(rank - 1, 0);
  int64_t stride = 1;
  for (size_t d = rank; d-- > 0;) {
    if (q_dims[d] != 1 && q_dims[d] != theta_dims[d]) {
      return ffi::Error::InvalidArgument(std::string(name) + ": q must broadcast to the logits");
    }
    const int64_t q_stride = q_dims[d] == 1 ? 0 : stride;
    stride *= q_dims[d];
    if (d == rank - 1) {
      layout->q_class_stride = q_stride;
    } else {
      layout->lead[d] = theta_dims[d];
      layout->q_lead_stride[d] = q_stride;
      layout->rows *= theta_dims[d];
    }
  }
  return ffi::Error::Success();
}

// A row's result, as the root kernels return it (see fdiv/cpu_kernel.py).
struct RowResult {
  float shift;   // the frame: the root rounded to float32, in the logits' own frame
  float t;       // the anchored root relative to the frame: t_row − shift, exact to float32
  float q_sum;   // Q = Σ_j q_j (1 for an empty row or a non-positive sum)
  bool empty;    // every class masked (−inf)
  float excess;  // Σ_j q_j (f*(θ_j − τ) + f(0)): the value's sum (_value_rel, operators.py)
};

// The result for the anchored root t in the frame of the row max m: the root rounded to
// float32 in the logits' frame, so that θ_j − shift is exact for the classes next to the root,
// and t the rest of it, taken as (m − shift) + t (exact, then rounded once): a pole root 1e-30
// above a logit of 1 (reverse KL with a tiny q_j) is lost in m + t even in double.
inline RowResult Framed(double m, double t, double q_total, double excess) {
  const float shift = static_cast<float>(m + t);
  return {shift, static_cast<float>((m - static_cast<double>(shift)) + t),
          static_cast<float>(q_total), false, static_cast<float>(excess)};
}

// The kernels' outputs, one element per row.
struct RowOutputs {
  float* shift;
  float* t;
  float* q_sum;
  bool* empty;
  float* excess;

  void Set(int64_t row, const RowResult& r) const {
    shift[row] = r.shift;
    t[row] = r.t;
    q_sum[row] = r.q_sum;
    empty[row] = r.empty;
    excess[row] = r.excess;
  }
};

// What a root kernel reads and writes: the rows of logits, their q, and the results per row.
struct RowProblem {
  RowLayout layout;
  const float* theta = nullptr;
  const float* q = nullptr;
  RowOutputs out;
};

// The FFI signature of the root kernels: XLA's thread pool, the logits and q, and per row the
// frame, the root, Q, whether it is empty and the value's sum (attributes may follow).
inline auto RootBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::PRED>>()
      .Ret<ffi::Buffer<ffi::F32>>();
}

// The problem of a root kernel's arguments and results (RootBinding); an error names the kernel.
inline ffi::Error MakeRowProblem(const char* name, ffi::Buffer<ffi::F32> theta,
                                 ffi::Buffer<ffi::F32> q, ffi::ResultBuffer<ffi::F32> shift,
                                 ffi::ResultBuffer<ffi::F32> t, ffi::ResultBuffer<ffi::F32> q_sum,
                                 ffi::ResultBuffer<ffi::PRED> empty,
                                 ffi::ResultBuffer<ffi::F32> excess, RowProblem* p) {
  if (ffi::Error error = MakeRowLayout(theta.dimensions(), q.dimensions(), name, &p->layout);
      error.failure()) {
    return error;
  }
  p->theta = theta.typed_data();
  p->q = q.typed_data();
  p->out = {shift->typed_data(), t->typed_data(), q_sum->typed_data(), empty->typed_data(),
            excess->typed_data()};
  return ffi::Error::Success();
}

// The row's max and sum (the sum is NaN when the row holds a NaN, or +inf and −inf).
inline void MaxAndSum(const float* x, int64_t k, double* max, double* sum) {
  const float neg = -std::numeric_limits<float>::infinity();
  V4f m0 = V4f{neg, neg, neg, neg}, m1 = m0;
  V4d s0 = Splat(0.0), s1 = s0;
  int64_t j = 0;
  for (; j + 8 <= k; j += 8) {
    const V4f a = LoadFloats(x + j), b = LoadFloats(x + j + 4);
    m0 = a > m0 ? a : m0;  // NaN never compares greater: the sum reports it
    m1 = b > m1 ? b : m1;
    s0 += ToDouble(a);
    s1 += ToDouble(b);
  }
  double m = neg, total = 0.0;
  for (int lane = 0; lane < 4; ++lane) {
    m = std::max({m, static_cast<double>(m0[lane]), static_cast<double>(m1[lane])});
    total += s0[lane] + s1[lane];
  }
  for (; j < k; ++j) {
    if (x[j] > m) m = x[j];
    total += x[j];
  }
  *max = m;
  *sum = total;
}

// What the first pass over a row gives the bracket of its root (bracket() in
// root_finding.py): the max, Q = Σ q, q at the argmax (the largest among ties), Σ q θ for
// Jensen's bound and Σ θ (NaN when the row holds a NaN, or +inf).
struct RowStart {
  double max = -kInf, q_sum = 0.0, q_top = 0.0, weighted = 0.0, plain = 0.0;

  bool Nan() const { return std::isnan(plain) || plain == kInf; }
  bool Empty() const { return max == -kInf; }
  // Q, or 1 for an empty row or a non-positive sum (as row_stats in root_finding.py).
  double QTotal() const { return (Empty() || !(q_sum > 0.0)) ? 1.0 : q_sum; }
  // q at the argmax, or 1 where it is not positive (as row_stats).
  double QTop() const { return q_top > 0.0 ? q_top : 1.0; }
  // The result of a row that the first pass decides: NaN (a NaN or +inf logit) or empty.
  RowResult Degenerate() const {
    if (Empty()) return {0.0f, 0.0f, 1.0f, true, 0.0f};
    const float nan = static_cast<float>(kNaN);
    return {nan, nan, static_cast<float>(QTotal()), false, nan};
  }
};

// The first pass's results for a row of k classes sharing q, from its max and sum.
inline RowStart SharedRowStart(double max, double sum, double q, int64_t k) {
  RowStart row;
  row.max = max;
  row.plain = sum;
  row.q_sum = q * static_cast<double>(k);
  row.q_top = q;
  row.weighted = q * sum;
  return row;
}

// The first pass over a row of k logits x; q shared by the classes (q[0]) or per class.
template <bool shared_q>
RowStart ScanRow(const float* x, const float* q, int64_t k) {
  RowStart row;
  if constexpr (shared_q) {
    double max, sum;
    MaxAndSum(x, k, &max, &sum);
    row = SharedRowStart(max, sum, q[0], k);
  } else {
    for (int64_t j = 0; j < k; ++j) {  // q varies by class: its stride is 1
      const double v = x[j];
      const double qj = q[j];
      row.plain += v;
      row.q_sum += qj;
      row.weighted += qj > 0.0 ? qj * v : 0.0;
      if (v > row.max) {
        row.max = v;
        row.q_top = qj;
      } else if (v == row.max) {
        row.q_top = std::max(row.q_top, qj);
      }
    }
  }
  return row;
}

// The lower bound of the anchored root (frame of the row max), as bracket() in
// root_finding.py: the larger of the argmax's bound `lo` and Jensen's, Σ q θ / Q − max θ + hi
// (`hi` the bound from Q), each lowered by its rounding: the argmax's by a few ulps of itself (a
// pole root can lie 1e-14 above the max, and must stay above it), Jensen's, tight for rows of
// equal logits, by a few ulps of the mean logit it subtracts.
inline double LowerBound(const RowStart& row, double lo, double hi) {
  const double jensen = row.weighted / row.QTotal() - row.max + hi;  // −inf: a class in q is −inf
  const double eps = std::numeric_limits<double>::epsilon();
  lo -= 4.0 * eps * std::abs(lo);
  const double slack = 8.0 * eps * (1.0 + std::abs(hi) + std::abs(row.max));
  return std::max(lo, std::min(jensen, hi) - slack);
}

// Calls solve(begin, end) over [0, rows) in small batches from a shared counter, on the calling
// thread and on tasks of XLA's intra-op pool. The caller waits only for tasks that have started:
// a task still queued behind a busy pool finds no rows left and returns without calling solve,
// so nothing waits on it (and solve may refer to the caller's frame).
inline void ParallelRows(ffi::ThreadPool pool, int64_t rows,
                         std::function<void(int64_t, int64_t)> solve) {
  constexpr int64_t kBatch = 8;
  struct Work {
    std::function<void(int64_t, int64_t)> solve;
    int64_t rows;
    std::atomic<int64_t> next{0};
    std::mutex mutex;
    std::condition_variable done;
    int64_t active = 0;

    void Run() {
      for (;;) {
        const int64_t begin = next.fetch_add(kBatch);
        if (begin >= rows) return;
        solve(begin, std::min(begin + kBatch, rows));
      }
    }
  };
  if (rows <= 0) return;
  auto work = std::make_shared<Work>();
  work->solve = std::move(solve);
  work->rows = rows;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), (rows + kBatch - 1) / kBatch - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([work] {
      {
        std::lock_guard<std::mutex> lock(work->mutex);
        if (work->next.load() >= work->rows) return;
        ++work->active;
      }
      work->Run();
      std::lock_guard<std::mutex> lock(work->mutex);
      if (--work->active == 0) work->done.notify_all();
    });
  }
  work->Run();
  std::unique_lock<std::mutex> lock(work->mutex);
  work->done.wait(lock, [&] { return work->active == 0; });
}

}  // namespace fdiv_cpu

#endif  // FDIV_CPU_ROWS_H_
