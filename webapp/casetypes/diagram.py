"""The stage diagram: the engine's own machine drawn by `transitions` with Graphviz, as SVG."""

from __future__ import annotations

import re
from typing import Any

from transitions import State
from transitions.extensions.diagrams import GraphMachine

from webapp.casetypes.definition import APPROVAL, RESOLUTION, Definition

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KIND_LABELS = {APPROVAL: "approval", RESOLUTION: "end"}


def safe_label(text: str) -> str:
    """A designer's text made inert for a Graphviz label.

    Graphviz reads a label between < and > as HTML (which may name image files on the server)
    and expands backslash sequences such as \\G; neither may come from a designer.
    """
    text = _CONTROL.sub(" ", text)[:80]
    return text.replace("\\", "\\\\").replace("<", "\u2039").replace(">", "\u203a")


class _LabelledState(State):
    def __init__(self, *args: Any, label: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label = label


class _StageGraph(GraphMachine):
    state_cls = _LabelledState
    style_attributes = {  # noqa: RUF012 - the attribute GraphMachine reads its styles from
        "node": {
            "default": {
                "style": "rounded,filled",
                "shape": "rectangle",
                "fillcolor": "white",
                "color": "#5a6472",
                "fontname": "Helvetica",
                "fontsize": "12",
                "peripheries": "1",
            },
            "resolution": {"fillcolor": "#eef2f6", "color": "#5a6472", "peripheries": "2"},
            "approval": {"fillcolor": "#fff8e6", "color": "#b58105"},
            "active": {"fillcolor": "#d6e9ff", "color": "#1f4e79", "penwidth": "3"},
        },
        "edge": {
            "default": {"color": "#5a6472", "fontname": "Helvetica", "fontsize": "10"},
        },
        "graph": {"default": {"fontname": "Helvetica", "fontsize": "14"}},
    }


class _Model:
    def __init__(self, stage: str) -> None:
        self.stage = stage


def render_svg(definition: Definition, title: str, current: str | None = None) -> bytes:
    """The SVG of the stage diagram, with `current` highlighted; runs Graphviz's `dot`."""
    # Nodes are named by position, never by the stage key: a draft's keys are not checked
    # yet, and Graphviz reads a name between < and > as HTML.
    node = {stage.key: f"s{index}" for index, stage in enumerate(definition.stages)}
    first = node[definition.first_stage.key]
    model = _Model(node.get(current or "", first))
    states = []
    for stage in definition.stages:
        kind = _KIND_LABELS.get(stage.kind)
        label = safe_label(stage.name) + (f"\\n({kind})" if kind else "")
        states.append({"name": node[stage.key], "label": label})
    transitions: list[dict[str, str]] = []
    for source, action, target in definition.edges():
        if target in node:
            transitions.append(
                {
                    "trigger": f"t{len(transitions)}",
                    "source": node[source],
                    "dest": node[target],
                    "label": safe_label(action),
                }
            )
    machine = _StageGraph(
        model=model,
        states=states,
        transitions=transitions,
        initial=model.stage,
        auto_transitions=False,
        graph_engine="graphviz",
        model_attribute="stage",
        title=safe_label(title),
    )
    graph = machine.model_graphs[id(model)]
    graph.reset_styling()
    for stage in definition.stages:
        if stage.kind in ("resolution", "approval"):
            graph.set_node_style(node[stage.key], stage.kind)
    if current in node:
        graph.set_node_style(node[current], "active")
    # With the "graphviz" engine the graph is a graphviz.Digraph, which renders with `dot`.
    drawing: Any = machine.get_combined_graph()
    svg: bytes = drawing.pipe(format="svg")
    return svg
