// The engine's own OpenVINO operations (CPU). Built on first use by
// hodor/engine/backends/openvino_ops.py; see that module.
//
// HodorDeformColumns: the sampling half of a deformable 3x3 convolution.
//
// For every output pixel (b, y, x) and tap t = i * k + j of a k x k kernel, the input is sampled
// bilinearly at (y - pad + i + dy, x - pad + j + dx), (dy, dx) being the tap's predicted offset,
// zeros outside the map (torchvision's deform_conv2d without mask, as the model computes it). The
// samples are written channels last, tap-major: out[b, y, x, t * C + c]. A deformable convolution
// is then one matrix product of these columns with the weights laid out [(i, j, c), o], which
// OpenVINO runs in bf16; its own DeformableConvolution computes the product in fp32 only.
//
// Inputs: x [N, H, W, C] f32 or bf16 (channels last), offsets [N, 2 k k, H, W] f32 (dy of tap t at channel
// 2 t, dx at 2 t + 1). Attributes: kernel (k), pad, bf16 (1: the columns are bf16, rounded to
// nearest even; 0: f32). Used by hodor/engine/backends/deform_columns.py.
//
// HodorWinogradTiles and HodorWinogradUntile: the two transforms of a 3x3 convolution (stride 1,
// padding 1) computed as Winograd F(m x m, 3 x 3), m = 2, 3, 4 or 6 (attribute tile), n = m + 2; OpenVINO
// runs the n^2 products between them with its own kernels. Each m x m block of outputs (tile ty,
// tx) reads the n x n input block at rows m ty - 1 .. m ty + m, columns m tx - 1 .. m tx + m (zeros
// outside). The tiles operation writes V = B^T d B of every block, position p = n r + s major:
// V[p, tile, c], tile = (b th + ty) tw + tx, th = ceil(H / m), tw = ceil(W / m); with
// U[p] = (G g G^T)[p] as a [C, K] matrix, M[p] = V[p] U[p] is a batch of n^2 products; the untile
// operation writes y = A^T M A of every tile plus the bias, channels last, cropped to H x W.
// F(3x3, 3x3) serves bf16 stages (rounding its transformed values to bf16 costs about 6x a direct
// bf16 convolution's error, F(2x2, 3x3)'s 2x, F(4x4, 3x3)'s 11x), F(6x6, 3x3) fp32 ones (about 2x
// F(4x4, 3x3)'s rounding error there, a few units in 1e-6, with a fifth fewer products). Used by
// hodor/engine/backends/winograd_conv.py, which also computes the transformed weights.
//
// HodorWinogradTiles: input x [N, H, W, C] (f32 or bf16), or [N, C, H, W] with nchw = 1; attributes
// tile (m), bf16 (1: V in bf16; 0: f32), nchw; output V [n^2, N th tw, C]. HodorWinogradUntile:
// inputs M [n^2, N th tw, K] (bf16 or f32), x (read for its shape only), bias [K] f32; attributes
// tile, bf16 (the output's type), nchw; output y [N, H, W, K], or [N, K, H, W] with nchw = 1. Channels
// first, each tile row's input rows are first copied channels last, and its output rows written
// channels last then copied out.

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace hodor {

// A float's bits rounded to bf16's (in the low half), to nearest, ties to even (values are
// finite): of one value (uint32_t) or of each lane of a vector.
template <typename U>
static inline U bf16_bits(U bits) {
    return (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
}

static inline uint16_t to_bf16(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return static_cast<uint16_t>(bf16_bits(bits));
}

static inline float from_bf16(uint16_t v) {
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float value(const float* p, size_t i) {
    return p[i];
}

static inline float value(const uint16_t* p, size_t i) {
    return from_bf16(p[i]);
}

static inline void store(float* p, size_t i, float v) {
    p[i] = v;
}

static inline void store(uint16_t* p, size_t i, float v) {
    p[i] = to_bf16(v);
}

// f(data) with the tensor's values as const float* (f32) or const uint16_t* (bf16); false, f not
// called, for any other element type.
template <typename F>
static bool with_values(const ov::Tensor& t, F&& f) {
    if (t.get_element_type() == ov::element::f32) {
        f(t.data<const float>());
        return true;
    }
    if (t.get_element_type() == ov::element::bf16) {
        f(static_cast<const uint16_t*>(t.data()));
        return true;
    }
    return false;
}

// f(data) with an output's values as uint16_t* (bf16 true) or float*.
template <typename F>
static void with_output(ov::Tensor& t, bool bf16, F&& f) {
    if (bf16) {
        f(static_cast<uint16_t*>(t.data()));
    } else {
        f(t.data<float>());
    }
}

// dst[k] = sum over j < N of coef[j] * src[j][k], in one pass (the terms unrolled, k vectorised).
template <int N, typename S, typename O>
static inline void combine(O* dst, const float* coef, const S* const* src, size_t count) {
    float a[N];
    const S* p[N];
    for (int j = 0; j < N; ++j) {
        a[j] = coef[j];
        p[j] = src[j];
    }
    for (size_t k = 0; k < count; ++k) {
        float acc = 0.f;
        for (int j = 0; j < N; ++j) {
            acc += a[j] * value(p[j], k);
        }
        store(dst, k, acc);
    }
}

class DeformColumns : public ov::op::Op {
public:
    OPENVINO_OP("HodorDeformColumns");

    DeformColumns() = default;

    DeformColumns(const ov::Output<ov::Node>& x, const ov::Output<ov::Node>& offsets, int64_t kernel,
                  int64_t pad, int64_t bf16)
        : Op({x, offsets}),
          m_kernel(kernel),
          m_pad(pad),
          m_bf16(bf16) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, m_kernel > 0 && m_pad >= 0, "kernel must be positive and pad >= 0");
        const auto& xs = get_input_partial_shape(0);
        const auto& os = get_input_partial_shape(1);
        NODE_VALIDATION_CHECK(this, xs.rank().compatible(4) && os.rank().compatible(4),
                              "x [N, H, W, C] and offsets [N, 2 k k, H, W] must be 4-D");
        if (os.rank().is_static() && os[1].is_static()) {
            NODE_VALIDATION_CHECK(this, os[1].get_length() == 2 * m_kernel * m_kernel,
                                  "offsets must have 2 k k channels");
        }
        ov::PartialShape out = xs;
        if (xs.rank().is_static()) {
            out[3] = xs[3].is_static() ? ov::Dimension(xs[3].get_length() * m_kernel * m_kernel)
                                       : ov::Dimension::dynamic();
        }
        set_output_type(0, m_bf16 ? ov::element::bf16 : ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        check_new_args_count(this, args);
        return std::make_shared<DeformColumns>(args.at(0), args.at(1), m_kernel, m_pad, m_bf16);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("kernel", m_kernel);
        visitor.on_attribute("pad", m_pad);
        visitor.on_attribute("bf16", m_bf16);
        return true;
    }

    bool has_evaluate() const override {
        return true;
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& x = inputs[0];
        const auto& offsets = inputs[1];
        if (offsets.get_element_type() != ov::element::f32) {
            return false;
        }
        const auto shape = x.get_shape();
        const auto offset_shape = offsets.get_shape();
        const size_t taps = static_cast<size_t>(m_kernel * m_kernel);
        const Geometry g{shape[0], shape[1], shape[2], shape[3], taps};
        OPENVINO_ASSERT(offset_shape.size() == 4 && offset_shape[0] == g.n && offset_shape[1] == 2 * taps &&
                            offset_shape[2] == g.h && offset_shape[3] == g.w,
                        "HodorDeformColumns: offsets of shape ", offset_shape, " for x of shape ", shape);
        outputs[0].set_shape({g.n, g.h, g.w, g.c * taps});
        const float* od = offsets.data<const float>();
        return with_values(x, [&](const auto* xd) {
            with_output(outputs[0], m_bf16, [&](auto* out) {
                ov::parallel_for(g.n * g.h, [&](size_t row) {
                    fill_row(g, xd, od, out, row);
                });
            });
        });
    }

private:
    struct Geometry {
        size_t n, h, w, c, taps;
    };

    template <typename S, typename T>
    void fill_row(const Geometry& g, const S* xd, const float* od, T* out, size_t row) const {
        const size_t b = row / g.h, y = row % g.h, plane = g.h * g.w;
        const S* xb = xd + b * plane * g.c;
        const float* ob = od + b * 2 * g.taps * plane;
        const std::vector<S> zero(g.c, S(0));  // read in place of a corner outside the map
        const long h = static_cast<long>(g.h), w = static_cast<long>(g.w);
        for (size_t x = 0; x < g.w; ++x) {
            T* dst = out + ((b * g.h + y) * g.w + x) * g.c * g.taps;
            const size_t at = y * g.w + x;
            for (size_t t = 0; t < g.taps; ++t) {
                const float py = static_cast<float>(static_cast<long>(y) - m_pad + static_cast<long>(t) / m_kernel) +
                                 ob[(2 * t) * plane + at];
                const float px = static_cast<float>(static_cast<long>(x) - m_pad + static_cast<long>(t) % m_kernel) +
                                 ob[(2 * t + 1) * plane + at];
                const float fy = std::floor(py), fx = std::floor(px);
                const float ly = py - fy, lx = px - fx;
                const long y0 = static_cast<long>(fy), x0 = static_cast<long>(fx);
                const float weights[4] = {(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx};
                const long ys[4] = {y0, y0, y0 + 1, y0 + 1};
                const long xs[4] = {x0, x0 + 1, x0, x0 + 1};
                const S* corners[4];
                for (int q = 0; q < 4; ++q) {
                    const bool inside = ys[q] >= 0 && ys[q] < h && xs[q] >= 0 && xs[q] < w;  // else zeros
                    corners[q] = inside ? xb + (static_cast<size_t>(ys[q]) * g.w + static_cast<size_t>(xs[q])) * g.c
                                        : zero.data();
                }
                // The four corners weighed in one pass over the channels (in the order of the
                // sum above; a corner outside adds zero).
                combine<4>(dst + t * g.c, weights, corners, g.c);
            }
        }
    }

    int64_t m_kernel = 3;
    int64_t m_pad = 1;
    int64_t m_bf16 = 1;
};

// The transforms of Winograd F(m x m, 3 x 3), m = 2, 3, 4 or 6 (n = m + 2 inputs a side): B^T (n x n)
// and A^T (m x n), row-major. F(2x2, 3x3)'s add and subtract only; F(3x3, 3x3)'s points are 0, 1,
// -1, 2; F(4x4, 3x3)'s are those of hodor/engine/backends/winograd_conv.py (points 0, 1, -1, 2, -2);
// F(6x6, 3x3)'s below (its weight transform G_6 is in winograd_conv.py).
static constexpr float kBt2[16] = {1, 0, -1, 0, 0, 1, 1, 0, 0, -1, 1, 0, 0, 1, 0, -1};
static constexpr float kAt2[8] = {1, 1, 1, 0, 0, 1, -1, -1};
static constexpr float kBt4[36] = {4, 0, -5, 0, 1, 0,  0, -4, -4, 1, 1, 0, 0, 4, -4, -1, 1, 0,
                                   0, -2, -1, 2, 1, 0, 0, 2, -1, -2, 1, 0, 0, 4, 0, -5, 0, 1};
static constexpr float kAt4[24] = {1, 1, 1, 1, 1, 0, 0, 1, -1, 2, -2, 0, 0, 1, 1, 4, 4, 0, 0, 1, -1, 8, -8, 1};

// F(6x6, 3x3), points 0, 1, -1, 1/2, -1/2, 2, -2 (every entry exact in binary).
static constexpr float kBt6[64] = {
    1, 0, -5.25f, 0, 5.25f, 0, -1, 0,          0, 1, 1, -4.25f, -4.25f, 1, 1, 0,
    0, -1, 1, 4.25f, -4.25f, -1, 1, 0,         0, 2, 4, -2.5f, -5, 0.5f, 1, 0,
    0, -2, 4, 2.5f, -5, -0.5f, 1, 0,           0, 0.5f, 0.25f, -2.5f, -1.25f, 2, 1, 0,
    0, -0.5f, 0.25f, 2.5f, -1.25f, -2, 1, 0,   0, -1, 0, 5.25f, 0, -5.25f, 0, 1};
static constexpr float kAt6[48] = {1, 1, 1,  1,        1,         1,  1,   0, 0, 1, -1, 0.5f,     -0.5f,     2,  -2,  0,
                                   0, 1, 1,  0.25f,    0.25f,     4,  4,   0, 0, 1, -1, 0.125f,   -0.125f,   8,  -8,  0,
                                   0, 1, 1,  0.0625f,  0.0625f,   16, 16,  0, 0, 1, -1, 0.03125f, -0.03125f, 32, -32, 1};

static constexpr float kBt3[25] = {2, -1, -2, 1, 0, 0, -2, -1, 1,  0, 0, 2, -3,
                                   1, 0, 0, -1, 0,  1, 0, 0, 2, -1, -2, 1};
static constexpr float kAt3[15] = {1, 1, 1, 1, 0, 0, 1, -1, 2, 0, 0, 1, 1, 4, 1};

// One transform's matrices as compile-time constants, so that the unrolled sums below leave their
// zero terms out.
template <int M>
struct Winograd {
    static constexpr int m = M, n = M + 2;
    static constexpr float bt(int r, int c) {
        return M == 2 ? kBt2[r * n + c] : M == 3 ? kBt3[r * n + c] : M == 4 ? kBt4[r * n + c] : kBt6[r * n + c];
    }
    static constexpr float at(int r, int c) {
        return M == 2 ? kAt2[r * n + c] : M == 3 ? kAt3[r * n + c] : M == 4 ? kAt4[r * n + c] : kAt6[r * n + c];
    }
};

// Whether m is a tile these operations compute: 2, 3, 4 or 6 outputs a side.
static inline bool known_tile(int64_t m) {
    return m == 2 || m == 3 || m == 4 || m == 6;
}

// f(Winograd<m>{}) for tile m = 2, 3, 4 or 6.
template <typename F>
static void with_tile(int64_t tile, F&& f) {
    OPENVINO_ASSERT(known_tile(tile), "Winograd tiles of 2, 3, 4 or 6 outputs a side, not ", tile);
    if (tile == 2) {
        f(Winograd<2>{});
    } else if (tile == 3) {
        f(Winograd<3>{});
    } else if (tile == 4) {
        f(Winograd<4>{});
    } else {
        f(Winograd<6>{});
    }
}

// The transforms work on kLanes channels at a time, each value of a tile one vector of floats, so
// that a tile's arithmetic stays in registers.
constexpr size_t kLanes = 16;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
typedef uint32_t Bits __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef uint16_t Halves __attribute__((vector_size(kLanes * sizeof(uint16_t))));

// The first count (<= kLanes) values at p as a vector V (the lanes past count 0), and back. A whole
// vector is copied with a constant size, which compiles to one load or store.
template <typename V, typename T>
static inline V read_lanes(const T* p, size_t count) {
    V v = {};
    if (count == kLanes) {
        std::memcpy(&v, p, sizeof v);
    } else {
        std::memcpy(&v, p, count * sizeof(T));
    }
    return v;
}

template <typename V, typename T>
static inline void write_lanes(T* p, const V& v, size_t count) {
    if (count == kLanes) {
        std::memcpy(p, &v, sizeof v);
    } else {
        std::memcpy(p, &v, count * sizeof(T));
    }
}

// A vector's bits read as another vector type of the same size.
template <typename To, typename From>
static inline To same_bits(const From& v) {
    static_assert(sizeof(To) == sizeof(From), "vectors of one size");
    To to;
    std::memcpy(&to, &v, sizeof to);
    return to;
}

// count (<= kLanes) consecutive values at p as floats; the lanes past count are 0.
static inline Lanes load(const float* p, size_t count) {
    return read_lanes<Lanes>(p, count);
}

static inline Lanes load(const uint16_t* p, size_t count) {
    return same_bits<Lanes>(__builtin_convertvector(read_lanes<Halves>(p, count), Bits) << 16);
}

// The first count lanes of v stored at p (bf16 rounded as to_bf16 rounds).
static inline void put(float* p, Lanes v, size_t count) {
    write_lanes(p, v, count);
}

static inline void put(uint16_t* p, Lanes v, size_t count) {
    write_lanes(p, __builtin_convertvector(bf16_bits(same_bits<Bits>(v)), Halves), count);
}

// sum over j < n of T[row][j] v[j], T = B^T (bt) or A^T, its zero terms left out and the others
// added in the order of j.
template <typename W, bool bt>
static inline Lanes dot(int row, const Lanes* v) {
    Lanes acc = {};
#pragma GCC unroll 8
    for (int j = 0; j < W::n; ++j) {
        const float a = bt ? W::bt(row, j) : W::at(row, j);
        if (a != 0.f) {
            acc += a * v[j];
        }
    }
    return acc;
}

// The geometry both operations share: tiles of m x m outputs over an N x H x W map of C channels.
struct Tiling {
    size_t n, h, w, c, th, tw;
    // x: the map's shape, [N, C, H, W] (nchw) or [N, H, W, C].
    Tiling(const ov::Shape& x, size_t channels, size_t m, bool nchw)
        : n(x[0]),
          h(x[nchw ? 2 : 1]),
          w(x[nchw ? 3 : 2]),
          c(channels),
          th((h + m - 1) / m),
          tw((w + m - 1) / m) {}
    size_t tiles() const {
        return n * th * tw;
    }
};

// 16 consecutive values as 32-bit lanes (floats' bits, or bf16 values zero-extended), and back.
static inline Bits load_bits(const float* p) {
    return read_lanes<Bits>(p, kLanes);
}

static inline Bits load_bits(const uint16_t* p) {
    return __builtin_convertvector(read_lanes<Halves>(p, kLanes), Bits);
}

static inline void put_bits(float* p, Bits v) {
    write_lanes(p, v, kLanes);
}

static inline void put_bits(uint16_t* p, Bits v) {
    write_lanes(p, __builtin_convertvector(v, Halves), kLanes);
}

// Two vectors' lanes picked by index (0-15 the first's, 16-31 the second's): clang's and GCC 12's
// __builtin_shufflevector, or GCC's own __builtin_shuffle before that.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define HODOR_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define HODOR_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, Bits{__VA_ARGS__})
#endif

// A 16 x 16 block transposed in registers, v[i][j] becoming v[j][i]: four rounds of interleaving
// row i with row i + 8 (a perfect shuffle of the rows and of each row's values).
static inline void transpose16(Bits* v) {
    static_assert(kLanes == 16, "the interleaving rounds assume 16 lanes");
    for (int round = 0; round < 4; ++round) {
        Bits t[16];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
            t[2 * i] = HODOR_SHUFFLE(v[i], v[i + 8], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            t[2 * i + 1] = HODOR_SHUFFLE(v[i], v[i + 8], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        }
        std::memcpy(v, t, sizeof t);
    }
}

// dst[i dst_stride + j] = src[j src_stride + i] for i < rows, j < cols (each side contiguous in its
// inner index), in 16 x 16 blocks transposed in registers; the edges of the block grid value by value.
template <typename T>
static void transpose_rows(const T* src, size_t src_stride, T* dst, size_t dst_stride, size_t rows, size_t cols) {
    const size_t full_rows = rows / kLanes * kLanes, full_cols = cols / kLanes * kLanes;
    for (size_t j0 = 0; j0 < full_cols; j0 += kLanes) {
        for (size_t i0 = 0; i0 < full_rows; i0 += kLanes) {
            Bits v[kLanes];
            for (size_t k = 0; k < kLanes; ++k) {
                v[k] = load_bits(src + (j0 + k) * src_stride + i0);
            }
            transpose16(v);
            for (size_t k = 0; k < kLanes; ++k) {
                put_bits(dst + (i0 + k) * dst_stride + j0, v[k]);
            }
        }
        for (size_t i = full_rows; i < rows; ++i) {
            for (size_t j = j0; j < j0 + kLanes; ++j) {
                dst[i * dst_stride + j] = src[j * src_stride + i];
            }
        }
    }
    for (size_t j = full_cols; j < cols; ++j) {
        for (size_t i = 0; i < rows; ++i) {
            dst[i * dst_stride + j] = src[j * src_stride + i];
        }
    }
}

// One row of an N x C x H x W map's channels, [W, C] channels last: dst[x c + ch] = src[ch plane + x].
template <typename S>
static void row_to_channels_last(const S* src, size_t plane, size_t w, size_t c, S* dst) {
    transpose_rows(src, plane, dst, c, w, c);
}

// The inverse: [W, C] channels last into one row of each channel's plane.
template <typename O>
static void row_to_channels_first(const O* src, size_t w, size_t c, size_t plane, O* dst) {
    transpose_rows(src, c, dst, plane, c, w);
}

// What both Winograd operations share: their attributes (tile, bf16, nchw), evaluated on the CPU.
class WinogradOp : public ov::op::Op {
public:
    WinogradOp() = default;

    WinogradOp(const ov::OutputVector& args, int64_t tile, int64_t bf16, int64_t nchw)
        : Op(args),
          m_tile(tile),
          m_bf16(bf16),
          m_nchw(nchw) {}

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("tile", m_tile);
        visitor.on_attribute("bf16", m_bf16);
        visitor.on_attribute("nchw", m_nchw);
        return true;
    }

    bool has_evaluate() const override {
        return true;
    }

protected:
    void check_attributes() {
        NODE_VALIDATION_CHECK(this, known_tile(m_tile), "tile must be 2, 3, 4 or 6");
        NODE_VALIDATION_CHECK(this, m_nchw == 0 || m_nchw == 1, "nchw must be 0 or 1");
    }

    // The axes of a map's channels, height and width in this operation's layout.
    int channel_axis() const {
        return m_nchw ? 1 : 3;
    }

    int height_axis() const {
        return m_nchw ? 2 : 1;
    }

    int64_t m_tile = 2;
    int64_t m_bf16 = 1;
    int64_t m_nchw = 0;
};

class WinogradTiles : public WinogradOp {
public:
    OPENVINO_OP("HodorWinogradTiles");

    WinogradTiles() = default;

    WinogradTiles(const ov::Output<ov::Node>& x, int64_t tile, int64_t bf16, int64_t nchw)
        : WinogradOp({x}, tile, bf16, nchw) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        check_attributes();
        const auto& xs = get_input_partial_shape(0);
        NODE_VALIDATION_CHECK(this, xs.rank().compatible(4), "x [N, C, H, W] or [N, H, W, C] must be 4-D");
        const int64_t n = m_tile + 2;
        ov::PartialShape out{n * n, ov::Dimension::dynamic(), ov::Dimension::dynamic()};
        if (xs.rank().is_static()) {
            const int hy = height_axis();
            out[2] = xs[channel_axis()];
            if (xs[0].is_static() && xs[hy].is_static() && xs[hy + 1].is_static()) {
                out[1] = xs[0].get_length() * ((xs[hy].get_length() + m_tile - 1) / m_tile) *
                         ((xs[hy + 1].get_length() + m_tile - 1) / m_tile);
            }
        }
        set_output_type(0, m_bf16 ? ov::element::bf16 : ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        check_new_args_count(this, args);
        return std::make_shared<WinogradTiles>(args.at(0), m_tile, m_bf16, m_nchw);
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& x = inputs[0];
        const auto xs = x.get_shape();
        const bool nchw = m_nchw != 0;
        bool done = false;
        with_tile(m_tile, [&](auto w) {
            using W = decltype(w);
            const Tiling g(xs, xs[channel_axis()], W::m, nchw);
            outputs[0].set_shape({static_cast<size_t>(W::n * W::n), g.tiles(), g.c});
            done = with_values(x, [&](const auto* xd) {
                with_output(outputs[0], m_bf16, [&](auto* out) {
                    ov::parallel_for(g.n * g.th, [&](size_t row) {
                        tile_row<W>(g, nchw, xd, out, row);
                    });
                });
            });
        });
        return done;
    }

private:
    // V = B^T d B for every tile of one row of tiles, kLanes channels at a time: d B row by row,
    // then B^T of each column. The n input rows are read in place (channels last) or first copied
    // channels last (nchw).
    template <typename W, typename S, typename T>
    static void tile_row(const Tiling& g, bool nchw, const S* xd, T* out, size_t row) {
        constexpr int n = W::n, m = W::m;
        const size_t b = row / g.th, ty = row % g.th, c = g.c, tiles = g.tiles();
        std::vector<S> zero(c, S(0));
        std::vector<S> band(nchw ? static_cast<size_t>(n) * g.w * c : 0);
        const S* rows[n];
        for (int i = 0; i < n; ++i) {
            const long y = static_cast<long>(ty) * m - 1 + i;
            if (y < 0 || y >= static_cast<long>(g.h)) {
                rows[i] = nullptr;
            } else if (nchw) {
                S* dst = band.data() + static_cast<size_t>(i) * g.w * c;
                row_to_channels_last(xd + (b * c * g.h + static_cast<size_t>(y)) * g.w, g.h * g.w, g.w, c, dst);
                rows[i] = dst;
            } else {
                rows[i] = xd + (b * g.h + static_cast<size_t>(y)) * g.w * c;
            }
        }
        for (size_t tx = 0; tx < g.tw; ++tx) {
            const S* d[n][n];  // the block's inputs, or zeros outside the map
            for (int i = 0; i < n; ++i) {
                for (int j = 0; j < n; ++j) {
                    const long x = static_cast<long>(tx) * m - 1 + j;
                    d[i][j] = (rows[i] && x >= 0 && x < static_cast<long>(g.w)) ? rows[i] + x * c : zero.data();
                }
            }
            T* v = out + ((b * g.th + ty) * g.tw + tx) * c;
            for (size_t c0 = 0; c0 < c; c0 += kLanes) {
                const size_t lanes = std::min(kLanes, c - c0);
                Lanes db[n][n];  // db[s][i] = (d B)[i][s] = sum_j d[i][j] B^T[s][j]
#pragma GCC unroll 8
                for (int i = 0; i < n; ++i) {
                    Lanes di[n];
#pragma GCC unroll 8
                    for (int j = 0; j < n; ++j) {
                        di[j] = load(d[i][j] + c0, lanes);
                    }
#pragma GCC unroll 8
                    for (int s = 0; s < n; ++s) {
                        db[s][i] = dot<W, true>(s, di);
                    }
                }
#pragma GCC unroll 8
                for (int s = 0; s < n; ++s) {
#pragma GCC unroll 8
                    for (int r = 0; r < n; ++r) {  // V[r][s] = sum_i B^T[r][i] (d B)[i][s]
                        put(v + static_cast<size_t>(r * n + s) * tiles * c + c0, dot<W, true>(r, db[s]), lanes);
                    }
                }
            }
        }
    }
};

class WinogradUntile : public WinogradOp {
public:
    OPENVINO_OP("HodorWinogradUntile");

    WinogradUntile() = default;

    WinogradUntile(const ov::Output<ov::Node>& m, const ov::Output<ov::Node>& x, const ov::Output<ov::Node>& bias,
                   int64_t tile, int64_t bf16, int64_t nchw)
        : WinogradOp({m, x, bias}, tile, bf16, nchw) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        check_attributes();
        const auto& ms = get_input_partial_shape(0);
        const auto& xs = get_input_partial_shape(1);
        NODE_VALIDATION_CHECK(this, ms.rank().compatible(3) && xs.rank().compatible(4),
                              "products [n n, tiles, K] and a 4-D x expected");
        ov::PartialShape out = ov::PartialShape::dynamic(4);
        if (xs.rank().is_static()) {
            out = xs;
            out[channel_axis()] = ms.rank().is_static() ? ms[2] : ov::Dimension::dynamic();
        }
        set_output_type(0, m_bf16 ? ov::element::bf16 : ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        check_new_args_count(this, args);
        return std::make_shared<WinogradUntile>(args.at(0), args.at(1), args.at(2), m_tile, m_bf16, m_nchw);
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& m = inputs[0];
        const auto ms = m.get_shape();
        const auto xs = inputs[1].get_shape();
        const bool nchw = m_nchw != 0;
        if (inputs[2].get_element_type() != ov::element::f32) {
            return false;
        }
        bool done = false;
        with_tile(m_tile, [&](auto w) {
            using W = decltype(w);
            const Tiling g(xs, ms.size() == 3 ? ms[2] : 0, W::m, nchw);
            OPENVINO_ASSERT(ms.size() == 3 && ms[0] == static_cast<size_t>(W::n * W::n) && ms[1] == g.tiles() &&
                                inputs[2].get_size() == g.c,
                            "HodorWinogradUntile: products of shape ", ms, " for x of shape ", xs);
            outputs[0].set_shape(nchw ? ov::Shape{g.n, g.c, g.h, g.w} : ov::Shape{g.n, g.h, g.w, g.c});
            const float* bias = inputs[2].data<const float>();
            done = with_values(m, [&](const auto* md) {
                with_output(outputs[0], m_bf16, [&](auto* y) {
                    ov::parallel_for(g.n * g.th, [&](size_t row) {
                        untile_row<W>(g, nchw, md, bias, y, row);
                    });
                });
            });
        });
        return done;
    }

private:
    // y = A^T M A + bias for every tile of one row of tiles, kLanes channels at a time: A^T M column
    // by column, then A. The m output rows are written in place (channels last) or through a
    // channels-last band (nchw).
    template <typename W, typename T, typename O>
    static void untile_row(const Tiling& g, bool nchw, const T* md, const float* bias, O* y, size_t row) {
        constexpr int n = W::n, m = W::m;
        const size_t b = row / g.th, ty = row % g.th, k = g.c, tiles = g.tiles();
        const size_t rows = std::min(static_cast<size_t>(m), g.h - ty * m);
        std::vector<O> band(nchw ? rows * g.w * k : 0);
        O* out = nchw ? band.data() : y + (b * g.h + ty * m) * g.w * k;  // rows of [W, K]
        for (size_t tx = 0; tx < g.tw; ++tx) {
            const T* p = md + ((b * g.th + ty) * g.tw + tx) * k;
            const size_t cols = std::min(static_cast<size_t>(m), g.w - tx * m);
            for (size_t k0 = 0; k0 < k; k0 += kLanes) {
                const size_t lanes = std::min(kLanes, k - k0);
                Lanes am[m][n];  // (A^T M)[r][s] = sum_i A^T[r][i] M[i][s]
#pragma GCC unroll 8
                for (int s = 0; s < n; ++s) {
                    Lanes ms[n];
#pragma GCC unroll 8
                    for (int i = 0; i < n; ++i) {
                        ms[i] = load(p + static_cast<size_t>(i * n + s) * tiles * k + k0, lanes);
                    }
#pragma GCC unroll 8
                    for (int r = 0; r < m; ++r) {
                        am[r][s] = dot<W, false>(r, ms);
                    }
                }
                const Lanes bias_lanes = load(bias + k0, lanes);
                for (size_t r = 0; r < rows; ++r) {
                    for (size_t u = 0; u < cols; ++u) {  // y[r][u] = sum_s (A^T M)[r][s] A^T[u][s] + bias
                        put(out + (r * g.w + tx * m + u) * k + k0, dot<W, false>(static_cast<int>(u), am[r]) + bias_lanes,
                            lanes);
                    }
                }
            }
        }
        if (nchw) {
            for (size_t r = 0; r < rows; ++r) {
                row_to_channels_first(band.data() + r * g.w * k, g.w, k, g.h * g.w,
                                      y + b * k * g.h * g.w + (ty * m + r) * g.w);
            }
        }
    }
};

}  // namespace hodor

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<hodor::DeformColumns>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<hodor::DeformColumns>>("HodorDeformColumns", "ai.hodor"),
    std::make_shared<ov::OpExtension<hodor::WinogradTiles>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<hodor::WinogradTiles>>("HodorWinogradTiles", "ai.hodor"),
    std::make_shared<ov::OpExtension<hodor::WinogradUntile>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<hodor::WinogradUntile>>("HodorWinogradUntile", "ai.hodor"),
}));
