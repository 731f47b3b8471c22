// HodorDeformColumns: the sampling half of a deformable 3x3 convolution, as an OpenVINO operation.
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
// nearest even; 0: f32). Built by hodor/engine/backends/deform_columns.py; see that module.

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

    static inline uint16_t to_bf16(float v) {
        uint32_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest, ties to even (values are finite)
        return static_cast<uint16_t>(bits >> 16);
    }

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

}  // namespace hodor

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<hodor::DeformColumns>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<hodor::DeformColumns>>("HodorDeformColumns", "ai.hodor"),
}));
