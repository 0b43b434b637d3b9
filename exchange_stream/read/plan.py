"""A compiled plan for the plain queries recipients send, run without graphql-core's executor.

graphql-core resolves every field of every item through its generic machinery; for a list of 500
encounters of five fields that is most of a request's CPU. Most queries, though, are plain: one
operation, fields with arguments and sub-selections, no fragments, no directives, every response
key once. For such a validated document ``compile_plan`` builds a tree of (response key, field,
sub-plan) once, and ``run_plan`` calls the same root resolvers and copies the selected fields out
of their results, serialising leaves with the schema's own scalar types.

Any surprise hands the request back to graphql-core, which then answers it in full (errors
included): a resolver error, a null where the schema promises a value, a value of an unexpected
shape. The answer is therefore the one graphql-core gives; only the way there is shorter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
)
from graphql.execution.values import get_argument_values, get_variable_values


class Fallback(Exception):
    """This request leaves the plan: graphql-core answers it instead."""


@dataclass(frozen=True)
class Selected:
    """One selected field: where its value goes, how to get it, and what it holds."""

    key: str
    name: str
    node: FieldNode
    field: Any  # GraphQLField
    # A custom field resolver (for example a cursor computed on demand), else a dict lookup.
    resolve: Callable[[Any], Any] | None
    shape: Shape


@dataclass(frozen=True)
class Shape:
    """How a value of one output type is copied: nullability, list, scalar or object."""

    non_null: bool
    item: Shape | None  # for a list
    scalar: GraphQLScalarType | None
    fields: tuple[Selected, ...] | None  # for an object
    type_name: str | None


@dataclass(frozen=True)
class Plan:
    operation: OperationDefinitionNode
    roots: tuple[Selected, ...]


def compile_plan(schema: GraphQLSchema, document: DocumentNode) -> Plan | None:
    """The plan of a plain query document (see the module docstring), or None."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if len(operations) != 1 or len(document.definitions) != 1:
        return None
    op = operations[0]
    if op.operation != OperationType.QUERY or op.directives or schema.query_type is None:
        return None
    roots = _fields(schema.query_type, op.selection_set.selections, root=True)
    return None if roots is None else Plan(op, roots)


def _fields(
    parent: GraphQLObjectType, selections: Any, root: bool = False
) -> tuple[Selected, ...] | None:
    out: list[Selected] = []
    keys: set[str] = set()
    for node in selections:
        if not isinstance(node, FieldNode) or node.directives:
            return None
        name = node.name.value
        key = node.alias.value if node.alias else name
        if key in keys or (name.startswith("__") and name != "__typename"):
            return None
        keys.add(key)
        if name == "__typename":
            if root:
                return None
            out.append(Selected(key, name, node, None, None, _TYPENAME))
            continue
        field = parent.fields.get(name)
        if field is None or (root and field.resolve is None):
            return None
        shape = _shape(field.type, node)
        if shape is None:
            return None
        resolve = None if root else field.resolve
        out.append(Selected(key, name, node, field, resolve, shape))
    return tuple(out)


_TYPENAME = Shape(True, None, None, None, "__typename")


def _shape(type_: Any, node: FieldNode) -> Shape | None:
    non_null = isinstance(type_, GraphQLNonNull)
    if non_null:
        type_ = type_.of_type
    if isinstance(type_, GraphQLList):
        item = _shape(type_.of_type, node)
        return None if item is None else Shape(non_null, item, None, None, None)
    if isinstance(type_, GraphQLScalarType):
        return None if node.selection_set else Shape(non_null, None, type_, None, None)
    if isinstance(type_, GraphQLObjectType) and node.selection_set:
        fields = _fields(type_, node.selection_set.selections)
        return None if fields is None else Shape(non_null, None, None, fields, type_.name)
    return None  # unions, interfaces and enums stay with graphql-core


async def run_plan(
    schema: GraphQLSchema, plan: Plan, context: Any, variables: dict[str, Any] | None
) -> dict[str, Any]:
    """``{"data": ...}`` for ``plan``; raises ``Fallback`` when graphql-core must answer."""
    definitions = plan.operation.variable_definitions or ()
    coerced = get_variable_values(schema, definitions, variables or {})
    if isinstance(coerced, list):
        raise Fallback
    data: dict[str, Any] = {}
    for sel in plan.roots:
        args = get_argument_values(sel.field, sel.node, coerced)
        try:
            value = await sel.field.resolve(None, _Info(context, (sel.node,)), **args)
        except Exception:
            raise Fallback from None
        data[sel.key] = _copy(value, sel.shape)
    return {"data": data}


class _Info:
    """What our root resolvers read of graphql-core's ``info``: the request context, and the
    field's node (what it selects; a plan holds no fragments)."""

    __slots__ = ("context", "field_nodes", "fragments")

    def __init__(self, context: Any, field_nodes: tuple[FieldNode, ...]) -> None:
        self.context = context
        self.field_nodes = field_nodes
        self.fragments: dict[str, Any] = {}


def _copy(value: Any, shape: Shape) -> Any:
    if value is None:
        if shape.non_null:
            raise Fallback
        return None
    if shape.item is not None:
        if not isinstance(value, list):
            raise Fallback
        item = shape.item
        return [_copy(v, item) for v in value]
    if shape.scalar is not None:
        try:
            return shape.scalar.serialize(value)
        except Exception:
            raise Fallback from None
    if shape.fields is not None:
        if not isinstance(value, dict):
            raise Fallback
        out = {}
        for sel in shape.fields:
            if sel.shape is _TYPENAME:
                out[sel.key] = shape.type_name
                continue
            got = sel.resolve(value, None) if sel.resolve is not None else value.get(sel.name)
            out[sel.key] = _copy(got, sel.shape)
        return out
    raise Fallback
