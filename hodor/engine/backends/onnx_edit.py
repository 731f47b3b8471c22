"""Editing an ONNX graph in place, for the rewrites the OpenVINO backend makes as it reads a graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx
from onnx import helper

Replacement = tuple[list[onnx.NodeProto], list[onnx.TensorProto]]
"""The nodes that replace one node, and the constants they add."""


def replace_nodes(
    graph: onnx.GraphProto, nodes: Sequence[onnx.NodeProto], added: Sequence[onnx.TensorProto]
) -> None:
    """Make ``nodes`` the graph's nodes, drop the initializers nothing reads any more (the weights of
    replaced nodes) and append ``added``."""
    read = {name for node in nodes for name in node.input} | {out.name for out in graph.output}
    del graph.node[:]
    graph.node.extend(nodes)
    # Drop in place: rebuilding the list would copy every initializer.
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in read:
            del graph.initializer[index]
    graph.initializer.extend(added)


def rewrite_each(
    graph: onnx.GraphProto,
    replace: Callable[[onnx.NodeProto, dict[str, onnx.TensorProto]], Replacement | None],
) -> int:
    """Offer every node of ``graph`` to ``replace`` (with the graph's initializers by name); where it
    returns a replacement, that takes the node's place. Returns how many were replaced; the graph
    is left untouched when none is."""
    initializers = {init.name: init for init in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    count = 0
    for node in graph.node:
        built = replace(node, initializers)
        if built is None:
            nodes.append(node)
            continue
        nodes += built[0]
        added += built[1]
        count += 1
    if count:
        replace_nodes(graph, nodes, added)
    return count


class NodeWriter:
    """Nodes written under one name prefix, for a replacement: :meth:`op` appends one."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []

    def op(
        self, kind: str, inputs: Sequence[str], what: str, output: str | None = None, **attrs: object
    ) -> str:
        """Append a ``kind`` node named ``<prefix>_<what>`` reading ``inputs``; returns its output's
        name (``output`` when given, else one made from its name)."""
        name = f"{self.prefix}_{what}"
        out = output or f"{name}:0"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], name=name, **attrs))
        return out
