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
from dataclasses import dataclass, field
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


def _unset(value: Any) -> Any:  # the placeholder of ``Shape.copy`` before it is compiled
    raise Fallback


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
    """How a value of one output type is copied: nullability, list, scalar or object.

    ``copy`` is the copier ``_copier`` compiles for it once, so that a request runs closures
    specialised to its shape instead of dispatching on the shape at every value."""

    non_null: bool
    item: Shape | None  # for a list
    scalar: GraphQLScalarType | None
    fields: tuple[Selected, ...] | None  # for an object
    type_name: str | None
    copy: Callable[[Any], Any] = field(default=_unset, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.copy is _unset:
            object.__setattr__(self, "copy", _copier(self))


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
    return shape.copy(value)


# Built-in scalars whose serialisation of a ``str`` is that same ``str`` (graphql-core's
# ``serialize_string`` and ``serialize_id``): such values are copied as they are.
_STR_SCALARS = frozenset({"String", "ID"})


def _copier(shape: Shape) -> Callable[[Any], Any]:
    """The function that copies a resolved value of ``shape`` into the answer: what graphql-core
    would serialise, or ``Fallback`` where it would report an error."""
    non_null = shape.non_null

    def null() -> None:
        if non_null:
            raise Fallback

    if shape.item is not None:
        copy_item = shape.item.copy

        def copy_list(value: Any) -> Any:
            if value is None:
                return null()
            if not isinstance(value, list):
                raise Fallback
            return [copy_item(v) for v in value]

        return copy_list
    if shape.scalar is not None:
        scalar = shape.scalar
        passthrough = scalar.name in _STR_SCALARS

        def copy_scalar(value: Any) -> Any:
            if passthrough and type(value) is str:
                return value
            if value is None:
                return null()
            try:
                return scalar.serialize(value)
            except Exception:
                raise Fallback from None

        return copy_scalar
    if shape.fields is not None:
        type_name = shape.type_name
        # (response key, field name, field resolver, copier); no copier for ``__typename``.
        plan = [
            (sel.key, sel.name, sel.resolve, None if sel.shape is _TYPENAME else sel.shape.copy)
            for sel in shape.fields
        ]

        def copy_object(value: Any) -> Any:
            if value is None:
                return null()
            if not isinstance(value, dict):
                raise Fallback
            out = {}
            for key, name, resolve, copy in plan:
                if copy is None:
                    out[key] = type_name
                    continue
                out[key] = copy(resolve(value, None) if resolve is not None else value.get(name))
            return out

        return copy_object
    if shape.type_name == "__typename":
        return lambda value: shape.type_name
    return _unset


# The shape of ``__typename`` (an object's type name, written by the object's copier).
_TYPENAME = Shape(True, None, None, None, "__typename")
