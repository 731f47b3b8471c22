"""fp32 ONNX graph -> fp16 graph, keeping the numerically sensitive parts in fp32.

What runs in fp16: every node that computes on activations (values that depend on a graph
input), with its weights stored in fp16. What stays fp32:

* normalisation statistics (LayerNormalization, InstanceNormalization — GroupNorm's export —
  GroupNormalization), softmax, reductions that sum over many pixels (ReduceSum/ReduceMean:
  an fp16 sum of ~10^4 features can overflow), exp/log/pow/sqrt;
* matrix products with a 0/1 selection (masked sums over pixels: the descriptor pooling),
  whose sums over a whole map can exceed the fp16 range;
* comparisons and arg-max on the masks (``m > 0.5``, the descriptor fallback): rounding a
  probability to fp16 must not flip which pixels a descriptor pools;
* GridSample (the deformable convolution's sampling): its grid in fp16 would be off by up to
  0.05 px on a wide 1/8 map, and TensorRT requires input and grid of one type, so both stay fp32;
* Resize's scales (ONNX requires float32);
* shape arithmetic that does not depend on the inputs (position encodings, Swin's
  shifted-window mask, base grids): cheap, and exact in fp32;
* cheap elementwise / data-movement nodes that take a computed fp32 value (as type promotion
  would: residual streams stay fp32 between the norms, and only the outputs of convolutions
  and matrix products are rounded to fp16 before they are added in), and those whose every
  float output is consumed in fp32 (a value is not rounded only to be cast straight back).

Graph inputs and outputs stay float32: the graph casts at its edges. The ``-inf`` and ``-100``
mask constants are exact in fp16, and a masked fp16 logit stays ``-inf`` through the fp32
softmax.

Why this is written here rather than taken from a library: ONNX Runtime's converter
(``onnxruntime.transformers.float16.convert_float_to_float16``, itself a modified copy of
``onnxconverter-common``'s, which was not measured separately) keeps nodes in fp32 by op type
(``op_block_list``) or by node name (``node_block_list``) and converts every other node. It was
tried on the parity checkpoint's three graphs with ``keep_io_types=True``, judged as the
exporter's tests judge (max |onnx − torch| / max |torch| over fresh inputs at sizes the graphs
were not traced at; onnxruntime 1.32, CPU)::

    stage     this module   op_block_list: FP32_OPS    + node_block_list: every node with an fp32
                            and the library's own      input or output in this module's graph
    backbone  7.9e-4        1.0e-3                     1.6e-3
    encoder   9.7e-4        7.5e-3                     7.3e-3
    decoder   5.9e-3        5.6e-2 (over the 1e-2      1.4e-1
                            the tests allow)

Op types cannot say what must stay fp32 in this network: the same Add, Mul and Where carry
the residual streams between norms (fp32 here because their input is), the sampling
positions that GridSample reads, and cheap fp16 work elsewhere; and the descriptor pooling's
MatMul is a masked sum over a whole map only because one operand is a 0/1 selection, which
only following the data shows. Naming the nodes this module keeps in fp32 did no better
(last column), and would have needed this module's analysis anyway.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

# Nodes computed in fp32 whatever their inputs (see the module docstring).
FP32_OPS = frozenset(
    {
        "LayerNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "BatchNormalization",
        "Softmax",
        "LogSoftmax",
        "ReduceSum",
        "ReduceMean",
        "ReduceSumSquare",
        "ReduceL2",
        "ReduceLogSumExp",
        "Exp",
        "Log",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "CumSum",
        "Sin",
        "Cos",
        "Range",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "Equal",
        "ArgMax",
        "ArgMin",
        "GridSample",
    }
)
# Inputs that stay fp32 on an fp16 node: (op, input index).
FP32_INPUTS = frozenset({("Resize", 1), ("Resize", 2)})
# Nodes that never start an fp16 region on their own: cheap, and run in fp32 when all their
# float outputs are consumed in fp32.
CHEAP_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Neg",
        "Abs",
        "Reshape",
        "Unsqueeze",
        "Squeeze",
        "Flatten",
        "Transpose",
        "Concat",
        "Slice",
        "Split",
        "Gather",
        "Expand",
        "Identity",
        "Where",
        "Cast",
        "Tile",
        "Pad",
    }
)
# Nodes whose outputs are not activations even when an input is (shapes, sizes).
SHAPE_OPS = frozenset({"Shape", "Size"})


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types: dict[str, int] = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp16 copy of ``model`` (shape-inferred, fp32 I/O kept). See the module docstring."""
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    g = model.graph
    for node in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise NotImplementedError(
                f"fp16 conversion does not handle subgraphs ({node.op_type} {node.name})"
            )
    types = _tensor_types(model)

    def is_float(name: str) -> bool:
        if name not in types:
            raise RuntimeError(f"no type known for {name!r}: shape inference left it untyped")
        return types[name] == FLOAT

    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in g.node:
        for i, name in enumerate(node.input):
            if name:
                consumers[name].append((node, i))
    graph_outputs = {o.name for o in g.output}

    # 1. Activations: reachable from a graph input, not through shape queries.
    active = {v.name for v in g.input}
    for node in g.node:  # nodes are topologically sorted
        if node.op_type not in SHAPE_OPS and any(n in active for n in node.input if n):
            active.update(o for o in node.output if o)

    def float_outputs(node: onnx.NodeProto) -> list[str]:
        return [o for o in node.output if o and is_float(o)]

    # 2. Candidate fp16 nodes: compute on activations and produce or take float values.
    selections = _selections(g, types)
    half: dict[int, bool] = {}
    for node in g.node:
        touches_float = any(n and is_float(n) for n in node.input) or bool(float_outputs(node))
        masked_sum = node.op_type in ("MatMul", "Gemm") and any(n in selections for n in node.input)
        half[id(node)] = (
            node.op_type not in FP32_OPS
            and not masked_sum
            and node.op_type not in SHAPE_OPS
            and touches_float
            and any(n in active for n in node.input if n)
        )

    # 3. Cheap nodes follow their inputs, as type promotion would: one taking a computed fp32
    #    value (a norm's output, a graph input, an encoding) runs in fp32, which keeps residual
    #    streams in fp32 while convolutions and matrix products run in fp16. A cheap node whose
    #    float outputs all feed fp32 slots (or graph outputs) runs in fp32 too.
    constant_values = {t.name for t in g.initializer} | {
        n.output[0] for n in g.node if n.op_type == "Constant"
    }
    producer = {o: n for n in g.node for o in n.output if o}
    graph_inputs = {v.name for v in g.input}

    def computed_fp32(name: str) -> bool:
        if name in constant_values or not is_float(name):
            return False
        return name in graph_inputs or (name in producer and not half[id(producer[name])])

    def wants_fp32(name: str) -> bool:
        if name in graph_outputs:
            return True
        uses = consumers.get(name, [])
        uses = [(c, i) for c, i in uses if c.op_type not in SHAPE_OPS]  # any type will do
        return bool(uses) and all(not half[id(c)] or (c.op_type, i) in FP32_INPUTS for c, i in uses)

    changed = True
    while changed:
        changed = False
        for node in g.node:
            if half[id(node)] and node.op_type in CHEAP_OPS:
                if any(n and computed_fp32(n) for n in node.input):
                    half[id(node)] = False
                    changed = True
        for node in reversed(g.node):
            if half[id(node)] and node.op_type in CHEAP_OPS:
                outs = float_outputs(node)
                if outs and all(wants_fp32(o) for o in outs):
                    half[id(node)] = False
                    changed = True

    # 3b. Weights reshaped in the graph (the exporter leaves large constants unfolded) are
    #     stored in fp16 when every use of the reshaped weight is in fp16.
    from_weights = set(constant_values)
    for node in g.node:
        if node.op_type in _LAYOUT_OPS and node.input[0] in from_weights:
            from_weights.update(o for o in node.output if o)
    for node in reversed(g.node):
        if half[id(node)] or node.op_type not in _LAYOUT_OPS or node.input[0] not in from_weights:
            continue
        outs = float_outputs(node)
        uses = [(c, i) for o in outs for c, i in consumers.get(o, [])]
        if (
            outs
            and uses
            and not any(o in graph_outputs for o in outs)
            and all(half[id(c)] and (c.op_type, i) not in FP32_INPUTS for c, i in uses)
        ):
            half[id(node)] = True

    # 4. Rewrite: retype outputs of fp16 nodes, convert weights, insert casts where types meet.
    produced_half: set[str] = set()
    for node in g.node:
        if half[id(node)]:
            produced_half.update(float_outputs(node))
            if node.op_type == "Cast":
                for a in node.attribute:
                    if a.name == "to" and a.i == FLOAT:
                        a.i = HALF
                        produced_half.add(node.output[0])

    initializers = {t.name: t for t in g.initializer}
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def slot_wants_half(node: onnx.NodeProto, i: int) -> bool:
        return half[id(node)] and (node.op_type, i) not in FP32_INPUTS

    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    extra_inits: list[onnx.TensorProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}__to_{'fp16' if to == HALF else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}_cast"))
            casts[key] = out
        return casts[key]

    # Weights and constants used only by fp16 slots are stored in fp16; mixed use gets a copy.
    def constant_half_uses(name: str) -> tuple[bool, bool]:
        uses = [(c, i) for c, i in consumers.get(name, []) if c.op_type not in SHAPE_OPS]
        want_h = [slot_wants_half(c, i) for c, i in uses]
        return any(want_h), all(want_h) and bool(uses)

    for name, tensor in initializers.items():
        if tensor.data_type != FLOAT:
            continue
        some, every = constant_half_uses(name)
        if every:
            tensor.CopyFrom(_to_half(tensor, name))
            produced_half.add(name)
        elif some:
            copy = _to_half(tensor, f"{name}__fp16")
            extra_inits.append(copy)
            casts[(name, HALF)] = copy.name
    for name, node in constants.items():
        if types.get(name) != FLOAT or half[id(node)]:
            continue
        some, every = constant_half_uses(name)
        value = next(a for a in node.attribute if a.name == "value")
        if every:
            value.t.CopyFrom(_to_half(value.t, value.t.name))
            produced_half.add(name)
        elif some:
            copy = _to_half(value.t, f"{name}__fp16")
            extra_inits.append(copy)
            casts[(name, HALF)] = copy.name

    for node in g.node:
        for i, name in enumerate(node.input):
            if not name or node.op_type in SHAPE_OPS or not is_float(name):
                continue
            have_half = name in produced_half
            if slot_wants_half(node, i) and not have_half:
                node.input[i] = cast(name, HALF)
            elif not slot_wants_half(node, i) and have_half:
                node.input[i] = cast(name, FLOAT)
        new_nodes.append(node)

    # Graph outputs keep float32: the producer writes an fp16 tensor, a final Cast restores the name.
    for out in g.output:
        if out.name in produced_half:
            inner = f"{out.name}__fp16"
            for node in new_nodes:
                for k, o in enumerate(node.output):
                    if o == out.name:
                        node.output[k] = inner
                for k, n in enumerate(node.input):
                    if n == out.name:
                        node.input[k] = inner
            new_nodes.append(
                helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"{out.name}_out_cast")
            )

    del g.node[:]
    g.node.extend(
        _topological(new_nodes, {v.name for v in g.input} | set(initializers) | {t.name for t in extra_inits})
    )
    g.initializer.extend(extra_inits)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _selections(g: onnx.GraphProto, types: dict[str, int]) -> set[str]:
    """Float values that are 0/1 selections (bool masks cast to float, reshaped or chosen between).

    A matrix product with one is a masked sum over pixels (descriptor pooling): up to every
    pixel of the map is added up, which can exceed the fp16 range, so it runs in fp32.
    """
    out: set[str] = set()
    for node in g.node:
        ins = [n for n in node.input if n]
        if node.op_type == "Cast" and ins and types.get(ins[0]) == TensorProto.BOOL:
            out.add(node.output[0])
        elif node.op_type == "Where" and len(ins) == 3 and ins[1] in out and ins[2] in out:
            out.add(node.output[0])
        elif node.op_type in _LAYOUT_OPS and ins and ins[0] in out:
            out.add(node.output[0])
        elif node.op_type == "Concat" and ins and all(n in out for n in ins):
            out.add(node.output[0])
    return out


_LAYOUT_OPS = frozenset(
    {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Slice", "Split", "Identity"}
)


def _to_half(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float32)
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    if np.isinf(half).sum() > np.isinf(array).sum():
        raise ValueError(f"{name}: a weight exceeds the fp16 range (|x| > 65504)")
    return numpy_helper.from_array(half, name)


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Order nodes so every input is produced before use (casts were appended out of place)."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    order: list[onnx.NodeProto] = []
    done: set[int] = set()
    visiting: set[int] = set()

    def visit(k: int) -> None:
        stack = [(k, False)]
        while stack:
            idx, expanded = stack.pop()
            if idx in done:
                continue
            if expanded:
                visiting.discard(idx)
                done.add(idx)
                order.append(nodes[idx])
                continue
            if idx in visiting:
                raise RuntimeError("cycle in graph while ordering fp16 casts")
            visiting.add(idx)
            stack.append((idx, True))
            for name in nodes[idx].input:
                if name and name not in available and name in producer and producer[name] not in done:
                    stack.append((producer[name], False))

    for k in range(len(nodes)):
        visit(k)
    return order
