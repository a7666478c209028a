"""YAML loaders for files that may be hostile: no aliases, or bounded ones.

    doc = yaml.load(text, Loader=NoAliasLoader)        # job.yml  # noqa: S506
    doc = yaml.load(text, Loader=BoundedAliasLoader)   # project.yml  # noqa: S506

Aliases let a few hundred bytes name a structure of billions of nodes
("billion laughs"): PyYAML composes them as shared references, cheaply, but
everything downstream that walks or serializes the document (validation,
``json.dumps`` into the job store) expands them. job.yml never needs them, so
:class:`NoAliasLoader` refuses the first anchor or alias it meets, before any
node behind it is built, with its line and column. project.yml is the
operator's and may come from ``yaml.dump`` (which writes anchors for shared
objects), so :class:`BoundedAliasLoader` accepts aliases while the document
they expand to stays under :data:`MAX_EXPANDED_NODES` nodes.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_EXPANDED_NODES", "AliasRefusedError", "BoundedAliasLoader", "NoAliasLoader"]

#: Most nodes a document read by BoundedAliasLoader may expand to, aliases
#: counted as many times as they are used.
MAX_EXPANDED_NODES = 100_000


class AliasRefusedError(yaml.MarkedYAMLError):
    """The document uses an anchor (``&name``) or an alias (``*name``)."""


class NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases, and over-long integers."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            raise AliasRefusedError(
                problem=f"YAML anchors and aliases are not allowed (found {kind} {event.anchor!r})",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)  # type: ignore[no-untyped-call]


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    try:
        return int(loader.construct_yaml_int(node))  # type: ignore[no-untyped-call]
    except ValueError:
        # Python refuses to parse ints of more than 4,300 digits (a DoS guard);
        # a plain ValueError would escape every caller's YAMLError handler.
        raise yaml.constructor.ConstructorError(
            problem="integer too long", problem_mark=node.start_mark
        ) from None


NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)  # type: ignore[arg-type]


class BoundedAliasLoader(yaml.SafeLoader):
    """SafeLoader whose aliases may not expand the document past
    :data:`MAX_EXPANDED_NODES` nodes; recursive aliases are refused."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        # Expanded size of every node composed so far (aliases included), by id:
        # the nodes stay alive in the tree and in ``self.anchors`` meanwhile.
        self._expanded: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        node = super().compose_node(parent, index)  # type: ignore[no-untyped-call]
        size = self._expanded.get(id(node))
        if isinstance(event, yaml.AliasEvent):
            if size is None:  # the alias points at a node still being composed
                raise AliasRefusedError(
                    problem=f"recursive alias {event.anchor!r} is not allowed",
                    problem_mark=mark,
                )
            return node
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        size = 1 + sum(self._expanded[id(c)] for c in children)
        if size > MAX_EXPANDED_NODES:
            raise AliasRefusedError(
                problem=f"the document expands to more than {MAX_EXPANDED_NODES} values "
                "through its aliases",
                problem_mark=mark,
            )
        self._expanded[id(node)] = size
        return node


BoundedAliasLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)  # type: ignore[arg-type]
