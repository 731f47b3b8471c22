// The engine's own OpenVINO operations, for bf16 stages on the CPU. Built on first use by
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
// Inputs: x [N, H, W, C] f32 (channels last), offsets [N, 2 k k, H, W] f32 (dy of tap t at channel
// 2 t, dx at 2 t + 1). Attributes: kernel (k), pad, bf16 (1: the columns are bf16, rounded to
// nearest even; 0: f32). Used by hodor/engine/backends/deform_columns.py.
//
// HodorWinogradTiles and HodorWinogradUntile: the two transforms of a 3x3 convolution (stride 1,
// padding 1) computed as Winograd F(2x2, 3x3), whose product between them OpenVINO runs in bf16.
// Each 2x2 block of outputs (tile ty, tx) reads the 4x4 input block at rows 2 ty - 1 .. 2 ty + 2,
// columns 2 tx - 1 .. 2 tx + 2 (zeros outside). The tiles operation writes V = B^T d B of every
// block, position p = 4 r + s major: V[p, tile, c], tile = (b th + ty) tw + tx, th = ceil(H / 2),
// tw = ceil(W / 2); with U[p] = (G g G^T)[p] as a [C, K] matrix, M[p] = V[p] U[p] is a batch of
// 16 products; the untile operation writes y = A^T M A of every tile plus the bias, channels last,
// cropped to H x W. B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1]:
// additions only, so rounding the transformed values to bf16 costs about 1.6x a direct bf16
// convolution's error (larger tiles, F(4x4, 3x3), cost 10x). Used by
// hodor/engine/backends/winograd_conv.py.
//
// HodorWinogradTiles: input x [N, H, W, C] f32; attribute bf16 (1: V in bf16; 0: f32); output
// V [16, N th tw, C]. HodorWinogradUntile: inputs M [16, N th tw, K] (bf16 or f32), x (read for
// its shape only), bias [K] f32; output y [N, H, W, K] f32.

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
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
        if (x.get_element_type() != ov::element::f32 || offsets.get_element_type() != ov::element::f32) {
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
        const float* xd = x.data<const float>();
        const float* od = offsets.data<const float>();
        if (m_bf16) {
            auto* out = static_cast<uint16_t*>(outputs[0].data());
            ov::parallel_for(g.n * g.h, [&](size_t row) {
                fill_row<uint16_t>(g, xd, od, out, row);
            });
        } else {
            auto* out = outputs[0].data<float>();
            ov::parallel_for(g.n * g.h, [&](size_t row) {
                fill_row<float>(g, xd, od, out, row);
            });
        }
        return true;
    }

private:
    struct Geometry {
        size_t n, h, w, c, taps;
    };

    template <typename T>
    void fill_row(const Geometry& g, const float* xd, const float* od, T* out, size_t row) const {
        const size_t b = row / g.h, y = row % g.h, plane = g.h * g.w;
        const float* xb = xd + b * plane * g.c;
        const float* ob = od + b * 2 * g.taps * plane;
        std::vector<float> acc(g.c);
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
                float* a = acc.data();
                for (size_t k = 0; k < g.c; ++k) {
                    a[k] = 0.f;
                }
                for (int q = 0; q < 4; ++q) {
                    if (ys[q] < 0 || ys[q] >= h || xs[q] < 0 || xs[q] >= w) {
                        continue;  // zeros outside the map
                    }
                    const float* src = xb + (static_cast<size_t>(ys[q]) * g.w + static_cast<size_t>(xs[q])) * g.c;
                    const float wq = weights[q];
                    for (size_t k = 0; k < g.c; ++k) {
                        a[k] += wq * src[k];
                    }
                }
                T* d = dst + t * g.c;
                if constexpr (sizeof(T) == 2) {
                    for (size_t k = 0; k < g.c; ++k) {
                        d[k] = to_bf16(a[k]);
                    }
                } else {
                    for (size_t k = 0; k < g.c; ++k) {
                        d[k] = a[k];
                    }
                }
            }
        }
    }

    int64_t m_kernel = 3;
    int64_t m_pad = 1;
    int64_t m_bf16 = 1;
};

class WinogradTiles : public ov::op::Op {
public:
    OPENVINO_OP("HodorWinogradTiles");

    WinogradTiles() = default;

    WinogradTiles(const ov::Output<ov::Node>& x, int64_t bf16) : Op({x}), m_bf16(bf16) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        const auto& xs = get_input_partial_shape(0);
        NODE_VALIDATION_CHECK(this, xs.rank().compatible(4), "x [N, H, W, C] must be 4-D");
        ov::PartialShape out{16, ov::Dimension::dynamic(), ov::Dimension::dynamic()};
        if (xs.rank().is_static()) {
            out[2] = xs[3];
            if (xs[0].is_static() && xs[1].is_static() && xs[2].is_static()) {
                out[1] = xs[0].get_length() * ((xs[1].get_length() + 1) / 2) * ((xs[2].get_length() + 1) / 2);
            }
        }
        set_output_type(0, m_bf16 ? ov::element::bf16 : ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        check_new_args_count(this, args);
        return std::make_shared<WinogradTiles>(args.at(0), m_bf16);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("bf16", m_bf16);
        return true;
    }

    bool has_evaluate() const override {
        return true;
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& x = inputs[0];
        const auto s = x.get_shape();
        const Tiling g{s[0], s[1], s[2], s[3], (s[1] + 1) / 2, (s[2] + 1) / 2};
        outputs[0].set_shape({16, g.tiles(), g.c});
        if (x.get_element_type() == ov::element::f32) {
            return tile_all(g, x.data<const float>(), outputs[0]);
        }
        if (x.get_element_type() == ov::element::bf16) {
            return tile_all(g, static_cast<const uint16_t*>(x.data()), outputs[0]);
        }
        return false;
    }

    struct Tiling {
        size_t n, h, w, c, th, tw;
        size_t tiles() const {
            return n * th * tw;
        }
    };

private:
    template <typename S>
    bool tile_all(const Tiling& g, const S* xd, ov::Tensor& out) const {
        if (m_bf16) {
            auto* od = static_cast<uint16_t*>(out.data());
            ov::parallel_for(g.n * g.th, [&](size_t row) {
                tile_row<uint16_t, S>(g, xd, od, row);
            });
        } else {
            auto* od = out.data<float>();
            ov::parallel_for(g.n * g.th, [&](size_t row) {
                tile_row<float, S>(g, xd, od, row);
            });
        }
        return true;
    }

    template <typename T, typename S>
    static void tile_row(const Tiling& g, const S* xd, T* out, size_t row) {
        const size_t b = row / g.th, ty = row % g.th, c = g.c, tiles = g.tiles();
        std::vector<S> zero(c, S(0));
        std::vector<float> col(4 * c);
        const S* rows[4];
        for (int i = 0; i < 4; ++i) {
            const long y = 2 * static_cast<long>(ty) - 1 + i;
            rows[i] = (y >= 0 && y < static_cast<long>(g.h)) ? xd + (b * g.h + static_cast<size_t>(y)) * g.w * c
                                                             : nullptr;
        }
        for (size_t tx = 0; tx < g.tw; ++tx) {
            const S* d[4][4];
            for (int i = 0; i < 4; ++i) {
                for (int j = 0; j < 4; ++j) {
                    const long x = 2 * static_cast<long>(tx) - 1 + j;
                    d[i][j] = (rows[i] && x >= 0 && x < static_cast<long>(g.w)) ? rows[i] + x * c : zero.data();
                }
            }
            const size_t tile = (b * g.th + ty) * g.tw + tx;
            for (int s = 0; s < 4; ++s) {
                // column s of d B for each of the four rows, then B^T of that column
                for (int i = 0; i < 4; ++i) {
                    const S *a0 = d[i][0], *a1 = d[i][1], *a2 = d[i][2], *a3 = d[i][3];
                    float* dst = col.data() + i * c;
                    switch (s) {
                        case 0: for (size_t k = 0; k < c; ++k) dst[k] = value(a0, k) - value(a2, k); break;
                        case 1: for (size_t k = 0; k < c; ++k) dst[k] = value(a1, k) + value(a2, k); break;
                        case 2: for (size_t k = 0; k < c; ++k) dst[k] = value(a2, k) - value(a1, k); break;
                        default: for (size_t k = 0; k < c; ++k) dst[k] = value(a1, k) - value(a3, k); break;
                    }
                }
                const float *q0 = col.data(), *q1 = q0 + c, *q2 = q0 + 2 * c, *q3 = q0 + 3 * c;
                T* o[4];
                for (int r = 0; r < 4; ++r) {
                    o[r] = out + ((static_cast<size_t>(4 * r + s)) * tiles + tile) * c;
                }
                for (size_t k = 0; k < c; ++k) {
                    const float v[4] = {q0[k] - q2[k], q1[k] + q2[k], q2[k] - q1[k], q1[k] - q3[k]};
                    for (int r = 0; r < 4; ++r) {
                        if constexpr (sizeof(T) == 2) {
                            o[r][k] = to_bf16(v[r]);
                        } else {
                            o[r][k] = v[r];
                        }
                    }
                }
            }
        }
    }

    int64_t m_bf16 = 1;
};

class WinogradUntile : public ov::op::Op {
public:
    OPENVINO_OP("HodorWinogradUntile");

    WinogradUntile() = default;

    WinogradUntile(const ov::Output<ov::Node>& m, const ov::Output<ov::Node>& x, const ov::Output<ov::Node>& bias,
                   int64_t bf16)
        : Op({m, x, bias}),
          m_bf16(bf16) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        const auto& ms = get_input_partial_shape(0);
        const auto& xs = get_input_partial_shape(1);
        NODE_VALIDATION_CHECK(this, ms.rank().compatible(3) && xs.rank().compatible(4),
                              "products [16, tiles, K] and x [N, H, W, C] expected");
        ov::PartialShape out = ov::PartialShape::dynamic(4);
        if (xs.rank().is_static()) {
            out = xs;
            out[3] = ms.rank().is_static() ? ms[2] : ov::Dimension::dynamic();
        }
        set_output_type(0, m_bf16 ? ov::element::bf16 : ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        check_new_args_count(this, args);
        return std::make_shared<WinogradUntile>(args.at(0), args.at(1), args.at(2), m_bf16);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("bf16", m_bf16);
        return true;
    }

    bool has_evaluate() const override {
        return true;
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& m = inputs[0];
        const auto s = inputs[1].get_shape();
        const auto ms = m.get_shape();
        const WinogradTiles::Tiling g{s[0], s[1], s[2], ms[2], (s[1] + 1) / 2, (s[2] + 1) / 2};
        OPENVINO_ASSERT(ms.size() == 3 && ms[0] == 16 && ms[1] == g.tiles() && inputs[2].get_size() == g.c,
                        "HodorWinogradUntile: products of shape ", ms, " for x of shape ", s);
        if (inputs[2].get_element_type() != ov::element::f32) {
            return false;
        }
        outputs[0].set_shape({g.n, g.h, g.w, g.c});
        const float* bias = inputs[2].data<const float>();
        if (m.get_element_type() == ov::element::f32) {
            return untile_all(g, m.data<const float>(), bias, outputs[0]);
        }
        if (m.get_element_type() == ov::element::bf16) {
            return untile_all(g, static_cast<const uint16_t*>(m.data()), bias, outputs[0]);
        }
        return false;
    }

private:
    static inline void store(float* p, size_t i, float v) {
        p[i] = v;
    }

    static inline void store(uint16_t* p, size_t i, float v) {
        p[i] = to_bf16(v);
    }

    template <typename T>
    bool untile_all(const WinogradTiles::Tiling& g, const T* md, const float* bias, ov::Tensor& out) const {
        if (m_bf16) {
            auto* y = static_cast<uint16_t*>(out.data());
            ov::parallel_for(g.n * g.th, [&](size_t row) {
                untile_row(g, md, bias, y, row);
            });
        } else {
            auto* y = out.data<float>();
            ov::parallel_for(g.n * g.th, [&](size_t row) {
                untile_row(g, md, bias, y, row);
            });
        }
        return true;
    }

    template <typename T, typename O>
    static void untile_row(const WinogradTiles::Tiling& g, const T* md, const float* bias, O* y, size_t row) {
        const size_t b = row / g.th, ty = row % g.th, k = g.c, tiles = g.tiles();
        std::vector<float> half(8 * k);  // A^T M: 2 rows x 4 columns of K values
        for (size_t tx = 0; tx < g.tw; ++tx) {
            const size_t tile = (b * g.th + ty) * g.tw + tx;
            for (int s = 0; s < 4; ++s) {
                const T* p0 = md + ((static_cast<size_t>(0 + s)) * tiles + tile) * k;
                const T* p1 = md + ((static_cast<size_t>(4 + s)) * tiles + tile) * k;
                const T* p2 = md + ((static_cast<size_t>(8 + s)) * tiles + tile) * k;
                const T* p3 = md + ((static_cast<size_t>(12 + s)) * tiles + tile) * k;
                float* t0 = half.data() + s * k;
                float* t1 = half.data() + (4 + s) * k;
                for (size_t o = 0; o < k; ++o) {
                    const float v1 = value(p1, o), v2 = value(p2, o);
                    t0[o] = value(p0, o) + v1 + v2;
                    t1[o] = v1 - v2 - value(p3, o);
                }
            }
            for (size_t i = 0; i < 2 && 2 * ty + i < g.h; ++i) {
                const float *r0 = half.data() + i * 4 * k, *r1 = r0 + k, *r2 = r0 + 2 * k, *r3 = r0 + 3 * k;
                O* left = y + ((b * g.h + 2 * ty + i) * g.w + 2 * tx) * k;
                for (size_t o = 0; o < k; ++o) {
                    store(left, o, r0[o] + r1[o] + r2[o] + bias[o]);
                }
                if (2 * tx + 1 < g.w) {
                    O* right = left + k;
                    for (size_t o = 0; o < k; ++o) {
                        store(right, o, r1[o] - r2[o] - r3[o] + bias[o]);
                    }
                }
            }
        }
    }

    int64_t m_bf16 = 0;
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
