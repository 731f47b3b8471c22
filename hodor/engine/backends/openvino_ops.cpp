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
// padding 1) computed as Winograd F(m x m, 3 x 3), m = 2, 3 or 4 (attribute tile), n = m + 2; OpenVINO
// runs the n^2 products between them with its own kernels. Each m x m block of outputs (tile ty,
// tx) reads the n x n input block at rows m ty - 1 .. m ty + m, columns m tx - 1 .. m tx + m (zeros
// outside). The tiles operation writes V = B^T d B of every block, position p = n r + s major:
// V[p, tile, c], tile = (b th + ty) tw + tx, th = ceil(H / m), tw = ceil(W / m); with
// U[p] = (G g G^T)[p] as a [C, K] matrix, M[p] = V[p] U[p] is a batch of n^2 products; the untile
// operation writes y = A^T M A of every tile plus the bias, channels last, cropped to H x W.
// F(3x3, 3x3) serves bf16 stages (rounding its transformed values to bf16 costs about 6x a direct
// bf16 convolution's error, F(2x2, 3x3)'s 2x, F(4x4, 3x3)'s 11x), F(4x4, 3x3) fp32 ones. Used by
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

static inline uint16_t to_bf16(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest, ties to even (values are finite)
    return static_cast<uint16_t>(bits >> 16);
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

// The transforms of Winograd F(m x m, 3 x 3), m = 2, 3 or 4 (n = m + 2 inputs a side): B^T (n x n)
// and A^T (m x n), row-major. F(2x2, 3x3)'s add and subtract only; F(3x3, 3x3)'s points are 0, 1,
// -1, 2; F(4x4, 3x3)'s are those of hodor/engine/backends/winograd_conv.py (points 0, 1, -1, 2, -2).
struct Transforms {
    int m, n;
    const float* bt;
    const float* at;
};

static constexpr float kBt2[16] = {1, 0, -1, 0, 0, 1, 1, 0, 0, -1, 1, 0, 0, 1, 0, -1};
static constexpr float kAt2[8] = {1, 1, 1, 0, 0, 1, -1, -1};
static constexpr float kBt4[36] = {4, 0, -5, 0, 1, 0,  0, -4, -4, 1, 1, 0, 0, 4, -4, -1, 1, 0,
                                   0, -2, -1, 2, 1, 0, 0, 2, -1, -2, 1, 0, 0, 4, 0, -5, 0, 1};
static constexpr float kAt4[24] = {1, 1, 1, 1, 1, 0, 0, 1, -1, 2, -2, 0, 0, 1, 1, 4, 4, 0, 0, 1, -1, 8, -8, 1};

static constexpr float kBt3[25] = {2, -1, -2, 1, 0, 0, -2, -1, 1,  0, 0, 2, -3,
                                   1, 0, 0, -1, 0,  1, 0, 0, 2, -1, -2, 1};
static constexpr float kAt3[15] = {1, 1, 1, 1, 0, 0, 1, -1, 2, 0, 0, 1, 1, 4, 1};

static Transforms transforms(int64_t tile) {
    OPENVINO_ASSERT(tile >= 2 && tile <= 4, "Winograd tiles of 2, 3 or 4 outputs a side, not ", tile);
    if (tile == 2) {
        return Transforms{2, 4, kBt2, kAt2};
    }
    return tile == 3 ? Transforms{3, 5, kBt3, kAt3} : Transforms{4, 6, kBt4, kAt4};
}

// f(std::integral_constant<int, n>) for the transforms' input tile side n = 4, 5 or 6.
template <typename F>
static void with_side(const Transforms& t, F&& f) {
    if (t.n == 4) {
        f(std::integral_constant<int, 4>{});
    } else if (t.n == 5) {
        f(std::integral_constant<int, 5>{});
    } else {
        f(std::integral_constant<int, 6>{});
    }
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

// One row of an N x C x H x W map's channels, [W, C] channels last: dst[x c + ch] = src[ch plane + x],
// 16 channels at a time (16 rows read in step, 16 consecutive values written).
template <typename S>
static void row_to_channels_last(const S* src, size_t plane, size_t w, size_t c, S* dst) {
    constexpr size_t block = 16;
    for (size_t c0 = 0; c0 < c; c0 += block) {
        const size_t cb = std::min(block, c - c0);
        const S* s = src + c0 * plane;
        for (size_t x = 0; x < w; ++x) {
            S* d = dst + x * c + c0;
            for (size_t k = 0; k < cb; ++k) {
                d[k] = s[k * plane + x];
            }
        }
    }
}

// The inverse: [W, C] channels last into one row of each channel's plane.
template <typename O>
static void row_to_channels_first(const O* src, size_t w, size_t c, size_t plane, O* dst) {
    constexpr size_t block = 16;
    for (size_t c0 = 0; c0 < c; c0 += block) {
        const size_t cb = std::min(block, c - c0);
        O* d = dst + c0 * plane;
        for (size_t x = 0; x < w; ++x) {
            const O* s = src + x * c + c0;
            for (size_t k = 0; k < cb; ++k) {
                d[k * plane + x] = s[k];
            }
        }
    }
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
        NODE_VALIDATION_CHECK(this, m_tile >= 2 && m_tile <= 4, "tile must be 2, 3 or 4");
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
        const Transforms t = transforms(m_tile);
        const Tiling g(xs, xs[channel_axis()], static_cast<size_t>(t.m), m_nchw != 0);
        outputs[0].set_shape({static_cast<size_t>(t.n * t.n), g.tiles(), g.c});
        const bool nchw = m_nchw != 0;
        return with_values(x, [&](const auto* xd) {
            with_output(outputs[0], m_bf16, [&](auto* out) {
                with_side(t, [&](auto side) {
                    ov::parallel_for(g.n * g.th, [&](size_t row) {
                        tile_row<decltype(side)::value>(t, g, nchw, xd, out, row);
                    });
                });
            });
        });
    }

private:
    // V = B^T d B for every tile of one row of tiles: d B row by row, then B^T of each column. The
    // n input rows are read in place (channels last) or first copied channels last (nchw).
    template <int n, typename S, typename T>
    static void tile_row(const Transforms& t, const Tiling& g, bool nchw, const S* xd, T* out, size_t row) {
        const size_t b = row / g.th, ty = row % g.th, c = g.c, tiles = g.tiles();
        const int m = t.m;
        std::vector<S> zero(c, S(0));
        std::vector<S> band(nchw ? static_cast<size_t>(n) * g.w * c : 0);
        std::vector<float> db(static_cast<size_t>(n * n) * c);
        const S *rows[n], *d[n];
        const float* cols[n];
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
            const size_t tile = (b * g.th + ty) * g.tw + tx;
            for (int i = 0; i < n; ++i) {
                for (int j = 0; j < n; ++j) {
                    const long x = static_cast<long>(tx) * m - 1 + j;
                    d[j] = (rows[i] && x >= 0 && x < static_cast<long>(g.w)) ? rows[i] + x * c : zero.data();
                }
                for (int s = 0; s < n; ++s) {  // (d B)[i][s] = sum_j d[i][j] B^T[s][j]
                    combine<n>(db.data() + static_cast<size_t>(i * n + s) * c, t.bt + s * n, d, c);
                }
            }
            for (int s = 0; s < n; ++s) {
                for (int i = 0; i < n; ++i) {
                    cols[i] = db.data() + static_cast<size_t>(i * n + s) * c;
                }
                for (int r = 0; r < n; ++r) {  // V[r][s] = sum_i B^T[r][i] (d B)[i][s]
                    combine<n>(out + (static_cast<size_t>(r * n + s) * tiles + tile) * c, t.bt + r * n, cols, c);
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
        const Transforms t = transforms(m_tile);
        const bool nchw = m_nchw != 0;
        const Tiling g(xs, ms.size() == 3 ? ms[2] : 0, static_cast<size_t>(t.m), nchw);
        OPENVINO_ASSERT(ms.size() == 3 && ms[0] == static_cast<size_t>(t.n * t.n) && ms[1] == g.tiles() &&
                            inputs[2].get_size() == g.c,
                        "HodorWinogradUntile: products of shape ", ms, " for x of shape ", xs);
        if (inputs[2].get_element_type() != ov::element::f32) {
            return false;
        }
        outputs[0].set_shape(nchw ? ov::Shape{g.n, g.c, g.h, g.w} : ov::Shape{g.n, g.h, g.w, g.c});
        const float* bias = inputs[2].data<const float>();
        return with_values(m, [&](const auto* md) {
            with_output(outputs[0], m_bf16, [&](auto* y) {
                with_side(t, [&](auto side) {
                    ov::parallel_for(g.n * g.th, [&](size_t row) {
                        untile_row<decltype(side)::value>(t, g, nchw, md, bias, y, row);
                    });
                });
            });
        });
    }

private:
    // y = A^T M A (+ bias) for every tile of one row of tiles: A^T M column by column, then A. The
    // m output rows are written in place (channels last) or through a channels-last band (nchw).
    template <int n, typename T, typename O>
    static void untile_row(const Transforms& t, const Tiling& g, bool nchw, const T* md, const float* bias, O* y,
                           size_t row) {
        const size_t b = row / g.th, ty = row % g.th, k = g.c, tiles = g.tiles();
        const int m = t.m;
        const size_t rows = std::min(static_cast<size_t>(m), g.h - ty * m);
        std::vector<float> am(static_cast<size_t>(m * n) * k);
        std::vector<O> band(nchw ? rows * g.w * k : 0);
        O* out = nchw ? band.data() : y + (b * g.h + ty * m) * g.w * k;  // rows of [W, K]
        const T* p[n + 1];
        const float* q[n + 1];
        float one_and_coef[n + 1];
        for (size_t tx = 0; tx < g.tw; ++tx) {
            const size_t tile = (b * g.th + ty) * g.tw + tx;
            for (int s = 0; s < n; ++s) {
                for (int i = 0; i < n; ++i) {
                    p[i] = md + (static_cast<size_t>(i * n + s) * tiles + tile) * k;
                }
                for (int r = 0; r < m; ++r) {  // (A^T M)[r][s] = sum_i A^T[r][i] M[i][s]
                    combine<n>(am.data() + static_cast<size_t>(r * n + s) * k, t.at + r * n, p, k);
                }
            }
            for (size_t r = 0; r < rows; ++r) {
                for (int s = 0; s < n; ++s) {
                    q[s] = am.data() + (r * n + s) * k;
                }
                q[n] = bias;  // the bias, as one more term with coefficient 1
                one_and_coef[n] = 1.f;
                for (int u = 0; u < m && tx * m + u < g.w; ++u) {  // y[r][u] = sum_s (A^T M)[r][s] A^T[u][s]
                    for (int s = 0; s < n; ++s) {
                        one_and_coef[s] = t.at[u * n + s];
                    }
                    combine<n + 1>(out + (r * g.w + tx * m + u) * k, one_and_coef, q, k);
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
