// The post-decode of one frame in the steady state, on the CPU: built and called by
// hodor/engine/loop/native_tail.py; see that module for what it computes and why.
//
// Plain C++17 with GCC/Clang vector types, AVX-512 permutations where the compiler targets them
// (-march=native), no library: the threads are the process's OpenMP pool, whose entry point the
// caller passes, or the call's own. Built with -ffp-contract=off, so every product and sum is
// rounded as written: the formulas below are PyTorch's bilinear resampling and softmax, term for
// term, and only exp differs from PyTorch's by its own rounding.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
namespace {

constexpr int kLanes = 16;
typedef float Floats __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t Ints __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Floats splat(float x) { return Floats{} + x; }
inline Floats load(const float* p) {
  Floats v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, Floats v) { std::memcpy(p, &v, sizeof v); }
inline int padded_width(int n) { return (n + kLanes - 1) / kLanes * kLanes; }

// exp(x) for x <= 0 (-inf included), about 1 ulp: x = n ln2 + r with |r| <= ln2/2, exp(r) by a
// degree-7 polynomial (the Taylor coefficients, enough for fp32 on that interval), times 2^n.
Floats exp_nonpositive(Floats x) {
  const Floats lowest = splat(-87.33654f);  // below this exp(x) is under FLT_MIN: 0
  const Ints underflow = x < lowest;
  x = x < lowest ? lowest : x;
  const Floats shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const Floats shifted = x * splat(1.44269504f) + shifter;
  const Floats n = shifted - shifter;
  Ints n_bits;
  std::memcpy(&n_bits, &shifted, sizeof n_bits);
  Ints shifter_bits;
  std::memcpy(&shifter_bits, &shifter, sizeof shifter_bits);
  const Ints n_int = n_bits - shifter_bits;
  // ln 2 in two parts, the first exact in few bits, so that n * ln2_hi is exact.
  Floats r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  Floats p = splat(1.0f / 5040.0f);
  p = p * r + splat(1.0f / 720.0f);
  p = p * r + splat(1.0f / 120.0f);
  p = p * r + splat(1.0f / 24.0f);
  p = p * r + splat(1.0f / 6.0f);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  // 2^n for n in [-126, 0]: its exponent bits.
  const Ints two_n_bits = (n_int + 127) << 23;
  Floats two_n;
  std::memcpy(&two_n, &two_n_bits, sizeof two_n);
  const Floats out = p * two_n;
  return underflow ? splat(0.0f) : out;
}

// PyTorch's bilinear source of output index dst (align_corners=False, by size): value =
// l0 * x[i0] + l1 * x[i1].
struct Taps {
  int i0, i1;
  float l0, l1;
};

Taps taps(int dst, float scale, int in_size) {
  float src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  if (src < 0.0f) src = 0.0f;
  int i0 = std::min(static_cast<int>(src), in_size - 1);
  int i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  float l1 = src - static_cast<float>(i0);
  return {i0, i1, 1.0f - l1, l1};
}

std::vector<Taps> all_taps(int count, float scale, int in_size) {
  std::vector<Taps> out(count);
  for (int i = 0; i < count; ++i) out[i] = taps(i, scale, in_size);
  return out;
}

// Sources a row resampled across reads past its last column: rows read by Across::apply are
// allocated this much longer (what is there only meets a zero weight or is never used).
constexpr int kSlack = 2 * kLanes;

// A row resampled across (bilinear, one axis): out[x] = l0 * in[i0] + l1 * in[i1], x < out.
// Where every run of kLanes outputs reads within 2 * kLanes inputs of its first (upsampling, and
// downsampling by up to about two), each run is two loads and two permutations with AVX-512;
// elsewhere, one value at a time.
class Across {
 public:
  Across(int out, float scale, int in_size) : taps_(all_taps(out, scale, in_size)) {
    const int runs = (out + kLanes - 1) / kLanes;
    base_.resize(runs);
    rel0_.resize(static_cast<size_t>(runs) * kLanes);
    rel1_.resize(rel0_.size());
    l0_.resize(rel0_.size());
    l1_.resize(rel0_.size());
    for (int r = 0; r < runs; ++r) {
      const int first = r * kLanes;
      base_[r] = taps_[first].i0;
      for (int k = 0; k < kLanes; ++k) {
        const Taps t = taps_[std::min(first + k, out - 1)];  // lanes past the end repeat the last
        const size_t at = static_cast<size_t>(first) + k;
        rel0_[at] = t.i0 - base_[r];
        rel1_[at] = t.i1 - base_[r];
        l0_[at] = t.l0;
        l1_[at] = t.l1;
        windowed_ = windowed_ && rel0_[at] >= 0 && rel1_[at] < 2 * kLanes;
      }
    }
  }

  // `in` readable up to its last source column plus kSlack; `out` up to size() rounded up to
  // lanes (the lanes past size() get the last column's value).
  void apply(const float* in, float* out) const {
#if defined(__AVX512F__)
    if (windowed_) {
      for (size_t r = 0; r < base_.size(); ++r) {
        const size_t at = r * kLanes;
        const __m512 lo = _mm512_loadu_ps(in + base_[r]);
        const __m512 hi = _mm512_loadu_ps(in + base_[r] + kLanes);
        const __m512 v0 = _mm512_permutex2var_ps(lo, _mm512_loadu_si512(&rel0_[at]), hi);
        const __m512 v1 = _mm512_permutex2var_ps(lo, _mm512_loadu_si512(&rel1_[at]), hi);
        const __m512 sum = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(&l0_[at]), v0),
                                         _mm512_mul_ps(_mm512_loadu_ps(&l1_[at]), v1));
        _mm512_storeu_ps(out + at, sum);
      }
      return;
    }
#endif
    for (size_t x = 0; x < taps_.size(); ++x) {
      const Taps& t = taps_[x];
      out[x] = t.l0 * in[t.i0] + t.l1 * in[t.i1];
    }
  }

 private:
  std::vector<Taps> taps_;
  std::vector<int32_t> base_, rel0_, rel1_;
  std::vector<float> l0_, l1_;
  bool windowed_ = true;
};

// Channel-first rows [q][width_padded] keyed by their row index, in a few slots, the least
// recently used one refilled: the rows a pass needs move forward together, so each is made once
// per thread (twice at a band's edge), and a row fetched for this step is never the one refilled
// while the step fetches fewer rows than there are slots.
class Rows {
 public:
  Rows(int slots, int q, int width) : width_(padded_width(width)), q_(q), key_(slots, -1), used_(slots, 0) {
    data_.assign(static_cast<size_t>(slots) * q * width_, 0.0f);
  }
  int stride() const { return width_; }
  // Row `key`, made by `fill(key, data)` when no slot holds it.
  template <typename Fill>
  const float* get(int key, Fill fill) {
    ++clock_;
    size_t victim = 0;
    for (size_t s = 0; s < key_.size(); ++s) {
      if (key_[s] == key) {
        used_[s] = clock_;
        return slot(s);
      }
      if (used_[s] < used_[victim]) victim = s;
    }
    key_[victim] = key;
    used_[victim] = clock_;
    fill(key, slot(victim));
    return slot(victim);
  }

 private:
  float* slot(size_t s) { return data_.data() + s * static_cast<size_t>(q_) * width_; }
  int width_, q_;
  std::vector<int> key_;
  std::vector<uint64_t> used_;
  std::vector<float> data_;
  uint64_t clock_ = 0;
};

// Softmax over channels of z [q][stride] at every column, in place (columns padded to lanes):
// exp(z - max) / sum, the sum in channel order.
void softmax_columns(float* z, int q, int stride, float* sums) {
  for (int x = 0; x < stride; x += kLanes) {
    Floats m = load(z + x);
    for (int c = 1; c < q; ++c) {
      Floats v = load(z + static_cast<size_t>(c) * stride + x);
      m = v > m ? v : m;
    }
    Floats s = splat(0.0f);
    for (int c = 0; c < q; ++c) {
      float* p = z + static_cast<size_t>(c) * stride + x;
      Floats e = exp_nonpositive(load(p) - m);
      store(p, e);
      s = s + e;
    }
    store(sums + x, s);
  }
  for (int c = 0; c < q; ++c) {
    float* row = z + static_cast<size_t>(c) * stride;
    for (int x = 0; x < stride; x += kLanes) store(row + x, load(row + x) / load(sums + x));
  }
}

struct Frame {
  const float* logits;  // [q][h][w]
  int q, h, w, nb;
  const uint8_t* ids;  // [q]
  const float* grid;   // [qb][h8][w8], the background grid at 1/8
  int qb;
  int hp, wp, rh, rw, fh, fw, h8, w8;
  float up_y, up_x, down_y, down_x, enc_y, enc_x;
  uint8_t* id_mask;  // [fh][fw]
  float* fg;         // [q - nb][h8][w8]
  float* bg;         // [qb][h8][w8]
};

// The output path for frame rows [y_begin, y_end): logits up to the padded size, softmax, the
// resized part resampled to the frame, arg-max (the first of equal maxima), id per channel.
void output_rows(const Frame& f, const Across& up_cols, const Across& down_cols, int y_begin, int y_end) {
  const int q = f.q;
  Rows across(3, q, f.rw);    // logit rows interpolated across to the padded width
  Rows at_frame(3, q, f.fw);  // probability rows resampled across to the frame's width
  const int rw_stride = across.stride(), fw_stride = at_frame.stride();
  const int z_stride = rw_stride + kSlack;
  std::vector<float> z(static_cast<size_t>(q) * z_stride), sums(z_stride), line(f.w + kSlack);
  std::vector<float> best(fw_stride);
  std::vector<int32_t> index(fw_stride);

  auto fill_across = [&](int row, float* out) {
    for (int c = 0; c < q; ++c) {
      std::memcpy(line.data(), f.logits + (static_cast<size_t>(c) * f.h + row) * f.w, sizeof(float) * f.w);
      up_cols.apply(line.data(), out + static_cast<size_t>(c) * rw_stride);
    }
  };
  auto fill_at_frame = [&](int row, float* out) {
    // Padded row `row` (< rh): the two logit rows' blend, softmax, then across to the frame.
    const Taps ty = taps(row, f.up_y, f.h);
    const float* a = across.get(ty.i0, fill_across);
    const float* b = across.get(ty.i1, fill_across);
    const Floats l0 = splat(ty.l0), l1 = splat(ty.l1);
    for (int c = 0; c < q; ++c) {
      const size_t in = static_cast<size_t>(c) * rw_stride, at = static_cast<size_t>(c) * z_stride;
      for (int x = 0; x < rw_stride; x += kLanes)
        store(&z[at + x], l0 * load(a + in + x) + l1 * load(b + in + x));
    }
    softmax_columns(z.data(), q, z_stride, sums.data());
    for (int c = 0; c < q; ++c)
      down_cols.apply(z.data() + static_cast<size_t>(c) * z_stride, out + static_cast<size_t>(c) * fw_stride);
  };

  for (int y = y_begin; y < y_end; ++y) {
    const Taps ty = taps(y, f.down_y, f.rh);
    const float* a = at_frame.get(ty.i0, fill_at_frame);
    const float* b = at_frame.get(ty.i1, fill_at_frame);
    const Floats l0 = splat(ty.l0), l1 = splat(ty.l1);
    for (int c = 0; c < q; ++c) {
      const float* ra = a + static_cast<size_t>(c) * fw_stride;
      const float* rb = b + static_cast<size_t>(c) * fw_stride;
      const Ints channel = Ints{} + c;
      for (int x = 0; x < fw_stride; x += kLanes) {
        const Floats v = l0 * load(ra + x) + l1 * load(rb + x);
        if (c == 0) {
          store(&best[x], v);
          const Ints zero = Ints{};
          std::memcpy(&index[x], &zero, sizeof zero);
          continue;
        }
        const Floats top = load(&best[x]);
        const Ints wins = v > top;  // strictly greater: ties keep the lower channel
        Ints idx;
        std::memcpy(&idx, &index[x], sizeof idx);
        idx = wins ? channel : idx;
        std::memcpy(&index[x], &idx, sizeof idx);
        store(&best[x], wins ? v : top);
      }
    }
    uint8_t* out = f.id_mask + static_cast<size_t>(y) * f.fw;
    for (int x = 0; x < f.fw; ++x) out[x] = f.ids[index[x]];
  }
}

// The internal path for encoder rows [i_begin, i_end): softmax at 1/4, up to the padded size,
// down to 1/8 (only the padded pixels that step reads are made); objects' maps to fg, the
// background grid times what the objects leave to bg.
void encoder_rows(const Frame& f, const std::vector<Taps>& up_cols, const std::vector<Taps>& enc_cols,
                  int i_begin, int i_end) {
  const int q = f.q, w = f.w;
  Rows soft(5, q, w);  // softmax of logit rows
  const int stride = soft.stride();
  std::vector<float> sums(stride);
  auto fill_soft = [&](int row, float* out) {
    for (int c = 0; c < q; ++c) {
      const float* in = f.logits + (static_cast<size_t>(c) * f.h + row) * w;
      float* o = out + static_cast<size_t>(c) * stride;
      std::memcpy(o, in, sizeof(float) * w);
      std::fill(o + w, o + stride, 0.0f);
    }
    softmax_columns(out, q, stride, sums.data());
  };
  const size_t n8 = static_cast<size_t>(f.h8) * f.w8;
  for (int i = i_begin; i < i_end; ++i) {
    const Taps dy = taps(i, f.enc_y, f.hp);
    const Taps uy[2] = {taps(dy.i0, f.up_y, f.h), taps(dy.i1, f.up_y, f.h)};
    const float* rows[2][2];
    for (int k = 0; k < 2; ++k) {
      rows[k][0] = soft.get(uy[k].i0, fill_soft);  // at most four rows a step, five slots
      rows[k][1] = soft.get(uy[k].i1, fill_soft);
    }
    for (int j = 0; j < f.w8; ++j) {
      const Taps dx = enc_cols[j];
      const Taps ux[2] = {up_cols[dx.i0], up_cols[dx.i1]};
      float rest = 1.0f;
      float fg_sum = 0.0f;
      for (int c = 0; c < q; ++c) {
        float v[2][2];
        for (int k = 0; k < 2; ++k) {
          const float* ra = rows[k][0] + static_cast<size_t>(c) * stride;
          const float* rb = rows[k][1] + static_cast<size_t>(c) * stride;
          for (int m = 0; m < 2; ++m) {
            const Taps& t = ux[m];
            v[k][m] = uy[k].l0 * (t.l0 * ra[t.i0] + t.l1 * ra[t.i1]) +
                      uy[k].l1 * (t.l0 * rb[t.i0] + t.l1 * rb[t.i1]);
          }
        }
        const float val = dy.l0 * (dx.l0 * v[0][0] + dx.l1 * v[0][1]) + dy.l1 * (dx.l0 * v[1][0] + dx.l1 * v[1][1]);
        if (c >= f.nb) {
          f.fg[(c - f.nb) * n8 + static_cast<size_t>(i) * f.w8 + j] = val;
          fg_sum = fg_sum + val;
        }
      }
      rest = rest - fg_sum;
      for (int k = 0; k < f.qb; ++k) {
        const size_t at = k * n8 + static_cast<size_t>(i) * f.w8 + j;
        f.bg[at] = f.grid[at] * rest;
      }
    }
  }
}

// The bands of one call, taken by whichever thread comes next: the threads of the process's
// OpenMP pool (the one PyTorch runs its CPU operations on, already awake after them) or threads
// of the call's own.
struct Bands {
  const Frame* f;
  const Across* up_cols;
  const Across* down_cols;
  const std::vector<Taps>* up_all;
  const std::vector<Taps>* enc_cols;
  int count;
  std::atomic<int> next{0};
  std::atomic<bool> failed{false};
};

void take_bands(void* arg) {
  Bands& b = *static_cast<Bands*>(arg);
  const Frame& f = *b.f;
  for (int k = b.next++; k < b.count; k = b.next++) {
    try {
      output_rows(f, *b.up_cols, *b.down_cols, f.fh * k / b.count, f.fh * (k + 1) / b.count);
      encoder_rows(f, *b.up_all, *b.enc_cols, f.h8 * k / b.count, f.h8 * (k + 1) / b.count);
    } catch (...) {
      b.failed = true;
    }
  }
}

// libgomp's entry point for a parallel region (also exported by LLVM's and Intel's runtimes):
// fn(data) on every thread of a team of num_threads, the caller included.
typedef void (*OpenMpParallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);

}  // namespace

extern "C" {

// Returns 0, or 1 when the work could not be done (out of memory); the outputs are then not all
// written. `openmp_parallel`: the process's OpenMP runtime's GOMP_parallel, or null (then the
// call starts threads of its own).
int hodor_steady_tail(const float* logits, int q, int h, int w, int nb, const uint8_t* ids, const float* grid,
                      int qb, int hp, int wp, int rh, int rw, int fh, int fw, float up_y, float up_x,
                      float down_y, float down_x, float enc_y, float enc_x, uint8_t* id_mask, float* fg,
                      float* bg, int threads, void* openmp_parallel) {
  try {
    Frame f{logits, q,  h,    w,      nb,     ids,    grid,   qb,    hp,    wp,      rh, rw,
            fh,     fw, hp / 8, wp / 8, up_y, up_x, down_y, down_x, enc_y, enc_x, id_mask, fg, bg};
    const Across up_cols(rw, up_x, w);  // the output path reads the resized part
    const Across down_cols(fw, down_x, rw);
    const std::vector<Taps> up_all = all_taps(wp, up_x, w);
    const std::vector<Taps> enc_cols = all_taps(f.w8, enc_x, wp);
    threads = std::max(1, std::min(threads, fh));
    // Two bands a thread, so that a thread that wakes late leaves less to wait for.
    Bands bands{&f, &up_cols, &down_cols, &up_all, &enc_cols, std::min(fh, 2 * threads)};
    if (threads > 1 && openmp_parallel != nullptr) {
      reinterpret_cast<OpenMpParallel>(openmp_parallel)(take_bands, &bands, static_cast<unsigned>(threads), 0);
    } else {
      std::vector<std::thread> pool;
      for (int k = 1; k < threads; ++k) {
        try {
          pool.emplace_back(take_bands, &bands);
        } catch (...) {
          break;  // the threads started (and this one) take every band
        }
      }
      take_bands(&bands);
      for (auto& t : pool) t.join();
    }
    return bands.failed ? 1 : 0;
  } catch (...) {
    return 1;
  }
}

}  // extern "C"
