"""The GraphQL contract: the seed's types unchanged, every canonical field exposed."""

from __future__ import annotations

from pathlib import Path

import pytest
from graphql import (
    GraphQLArgument,
    GraphQLField,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLUnionType,
    build_schema,
    value_from_ast,
)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "contracts" / "graphql" / "schema.graphql"

# The seed's contracts/graphql/schema.graphql, field by field: (type, field) -> (field type,
# {argument: argument type}). These clients' queries must keep working, so nothing here changes.
SEED_FIELDS: dict[tuple[str, str], tuple[str, dict[str, str]]] = {
    ("Query", "patient"): ("Patient", {"patientToken": "ID!"}),
    ("Query", "encounters"): ("[Encounter!]!", {"patientToken": "ID!"}),
    ("Patient", "patientToken"): ("ID!", {}),
    ("Patient", "dob"): ("String", {}),
    ("Encounter", "encounterId"): ("ID!", {}),
    ("Encounter", "patientToken"): ("ID!", {}),
    ("Encounter", "facilityId"): ("String", {}),
    ("Encounter", "admitTime"): ("String", {}),
    ("Encounter", "dischargeTime"): ("String", {}),
}

# Additions on Query: field -> (type, {argument: type}).
ADDED_QUERIES: dict[str, tuple[str, dict[str, str]]] = {
    "records": (
        "RecordPage!",
        {
            "source": "String",
            "kind": "String",
            "updatedSince": "DateTime",
            "first": "Int",
            "after": "String",
        },
    ),
    "claims": ("[Claim!]!", {"patientToken": "ID!", "first": "Int", "after": "String"}),
    "labResults": ("[LabResult!]!", {"patientToken": "ID!", "first": "Int", "after": "String"}),
    "encounters": ("[Encounter!]!", {"patientToken": "ID!", "first": "Int", "after": "String"}),
    "person": ("Person", {"personToken": "ID!"}),
}

# Persons (issue 22): a person's token on its records and patients, and its records across
# sources, paged like the feed. (type, field) -> (field type, {argument: argument type}).
PERSON_FIELDS: dict[tuple[str, str], tuple[str, dict[str, str]]] = {
    ("Person", "personToken"): ("ID!", {}),
    ("Person", "records"): ("RecordPage!", {"kind": "String", "first": "Int", "after": "String"}),
    ("Patient", "personToken"): ("ID", {}),
    ("Record", "personToken"): ("ID", {}),
}

# Each canonical kind object, the GraphQL type that carries it, and its fields.
CANONICAL_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "encounter": (
        "Encounter",
        (
            "encounter_id",
            "facility_id",
            "encounter_class",
            "admit_time",
            "discharge_time",
            "diagnosis_codes",
        ),
    ),
    "claim": (
        "Claim",
        (
            "claim_id",
            "payer_id",
            "service_date",
            "total_charge",
            "procedure_codes",
            "diagnosis_codes",
        ),
    ),
    "lab_result": (
        "LabResult",
        ("result_id", "test_code", "value", "reference_range", "collected_at", "status"),
    ),
}

# The shapes inside the kind objects, and the type of each field that holds one.
CANONICAL_SHAPES: dict[str, tuple[str, ...]] = {
    "Code": ("system", "code"),
    "Money": ("amount", "currency"),
    "ReferenceRange": ("low", "high"),
    "Quantity": ("quantity", "unit"),
}
SHAPED_FIELDS: dict[tuple[str, str], str] = {
    ("Encounter", "diagnosisCodes"): "[Code!]!",
    ("Claim", "totalCharge"): "Money!",
    ("Claim", "procedureCodes"): "[Code!]!",
    ("Claim", "diagnosisCodes"): "[Code!]!",
    ("LabResult", "testCode"): "Code!",
    ("LabResult", "value"): "LabValue!",
    ("LabResult", "referenceRange"): "ReferenceRange",
}

# The record envelope; the canonical meta {normalized_at, schema_hint, mapping_version} is on it.
RECORD_FIELDS: dict[str, str] = {
    "recordId": "ID!",
    "patientToken": "ID!",
    "personToken": "ID",
    "kind": "String!",
    "source": "String!",
    "schemaHint": "String!",
    "mappingVersion": "String!",
    "ingestedAt": "String!",
    "normalizedAt": "String!",
    "encounter": "Encounter",
    "claim": "Claim",
    "labResult": "LabResult",
}


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))


def object_type(schema: GraphQLSchema, name: str) -> GraphQLObjectType:
    found = schema.get_type(name)
    assert isinstance(found, GraphQLObjectType), f"{name} is not an object type"
    return found


def field(schema: GraphQLSchema, type_name: str, name: str) -> GraphQLField:
    fields = object_type(schema, type_name).fields
    assert name in fields, f"{type_name}.{name} is missing"
    return fields[name]


def default(argument: GraphQLArgument) -> object:
    """The SDL default of an argument (build_schema keeps it only on the AST node)."""
    node = argument.ast_node
    if node is None or node.default_value is None:
        return None
    return value_from_ast(node.default_value, argument.type)


def is_optional(argument: GraphQLArgument) -> bool:
    return not str(argument.type).endswith("!") or default(argument) is not None


def test_schema_file_parses_with_query_root(schema: GraphQLSchema) -> None:
    assert schema.query_type is not None and schema.query_type.name == "Query"
    assert schema.mutation_type is None and schema.subscription_type is None


@pytest.mark.parametrize(("type_name", "field_name"), list(SEED_FIELDS))
def test_seed_field_keeps_its_exact_type(
    schema: GraphQLSchema, type_name: str, field_name: str
) -> None:
    expected_type, expected_args = SEED_FIELDS[(type_name, field_name)]
    actual = field(schema, type_name, field_name)
    assert str(actual.type) == expected_type
    for arg, arg_type in expected_args.items():
        assert arg in actual.args, f"{type_name}.{field_name}({arg}) is missing"
        assert str(actual.args[arg].type) == arg_type


def test_seed_queries_stay_valid_because_added_arguments_are_optional(
    schema: GraphQLSchema,
) -> None:
    for (type_name, field_name), (_, seed_args) in SEED_FIELDS.items():
        for arg_name, arg in field(schema, type_name, field_name).args.items():
            if arg_name not in seed_args:
                assert is_optional(arg), f"{type_name}.{field_name}({arg_name}) is required"


@pytest.mark.parametrize("query_name", list(ADDED_QUERIES))
def test_added_query_has_the_spec_signature(schema: GraphQLSchema, query_name: str) -> None:
    expected_type, expected_args = ADDED_QUERIES[query_name]
    actual = field(schema, "Query", query_name)
    assert str(actual.type) == expected_type
    assert {name: str(arg.type) for name, arg in actual.args.items()} == expected_args


def test_records_page_defaults_to_100_and_has_a_nullable_cursor(schema: GraphQLSchema) -> None:
    assert default(field(schema, "Query", "records").args["first"]) == 100
    assert str(field(schema, "RecordPage", "items").type) == "[Record!]!"
    assert str(field(schema, "RecordPage", "nextCursor").type) == "String"
    assert str(field(schema, "RecordPage", "resumeCursor").type) == "String!"


@pytest.mark.parametrize(("type_name", "field_name"), list(PERSON_FIELDS))
def test_person_field_has_the_spec_signature(
    schema: GraphQLSchema, type_name: str, field_name: str
) -> None:
    expected_type, expected_args = PERSON_FIELDS[(type_name, field_name)]
    actual = field(schema, type_name, field_name)
    assert str(actual.type) == expected_type
    assert {name: str(arg.type) for name, arg in actual.args.items()} == expected_args


def test_a_persons_records_page_like_the_feed(schema: GraphQLSchema) -> None:
    assert default(field(schema, "Person", "records").args["first"]) == 100
    assert set(object_type(schema, "Person").fields) == {"personToken", "records"}


def test_every_person_token_is_documented_as_the_callers_own(schema: GraphQLSchema) -> None:
    places = [
        field(schema, type_name, "personToken").description
        for type_name in ("Person", "Patient", "Record")
    ]
    places.append(field(schema, "Query", "person").args["personToken"].description)
    assert all("caller's person token" in (d or "") for d in places), places


def test_updated_since_is_a_date_time_scalar(schema: GraphQLSchema) -> None:
    assert isinstance(schema.get_type("DateTime"), GraphQLScalarType)
    assert schema.get_type("DateTime").description


@pytest.mark.parametrize(("name", "expected_type"), list(RECORD_FIELDS.items()))
def test_record_field(schema: GraphQLSchema, name: str, expected_type: str) -> None:
    assert str(field(schema, "Record", name).type) == expected_type


@pytest.mark.parametrize("kind", list(CANONICAL_KINDS))
def test_every_canonical_field_has_its_camel_case_field(schema: GraphQLSchema, kind: str) -> None:
    type_name, snake_fields = CANONICAL_KINDS[kind]
    fields = object_type(schema, type_name).fields
    missing = [camel(f) for f in ("patient_token", *snake_fields) if camel(f) not in fields]
    assert missing == []


@pytest.mark.parametrize("shape", list(CANONICAL_SHAPES))
def test_every_canonical_shape_has_its_fields(schema: GraphQLSchema, shape: str) -> None:
    assert set(object_type(schema, shape).fields) == set(CANONICAL_SHAPES[shape])


@pytest.mark.parametrize(("type_name", "field_name"), list(SHAPED_FIELDS))
def test_shaped_field_uses_the_shape_type(
    schema: GraphQLSchema, type_name: str, field_name: str
) -> None:
    assert str(field(schema, type_name, field_name).type) == SHAPED_FIELDS[(type_name, field_name)]


def test_lab_value_is_quantity_code_or_qualitative_result(schema: GraphQLSchema) -> None:
    lab_value = schema.get_type("LabValue")
    assert isinstance(lab_value, GraphQLUnionType)
    assert {t.name for t in lab_value.types} == {"Quantity", "Code", "QualitativeResult"}
    # Distinct field names across the members, so one selection can ask for all three shapes.
    names = [name for member in lab_value.types for name in member.fields]
    assert len(names) == len(set(names))


def test_every_type_and_field_is_described(schema: GraphQLSchema) -> None:
    undocumented = [
        f"{name}.{field_name}" if field_name else name
        for name, graphql_type in schema.type_map.items()
        if not name.startswith("__") and isinstance(graphql_type, GraphQLObjectType)
        for field_name in ["", *graphql_type.fields]
        if not (graphql_type.fields[field_name] if field_name else graphql_type).description
    ]
    assert undocumented == []


def test_every_patient_token_is_documented_as_the_recipient_token(schema: GraphQLSchema) -> None:
    for name, graphql_type in schema.type_map.items():
        if name.startswith("__") or not isinstance(graphql_type, GraphQLObjectType):
            continue
        for field_name, graphql_field in graphql_type.fields.items():
            places = [(field_name, graphql_field.description)]
            places += [(arg, a.description) for arg, a in graphql_field.args.items()]
            for place, description in places:
                if place == "patientToken":
                    assert "recipient token" in (description or ""), f"{name}.{field_name}"


def test_dob_is_documented_as_always_null(schema: GraphQLSchema) -> None:
    description = field(schema, "Patient", "dob").description or ""
    assert "Always null" in description and "date of birth" in description
