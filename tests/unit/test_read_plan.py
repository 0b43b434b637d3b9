"""The compiled plan answers plain queries exactly as graphql-core does, and hands back the rest."""

from __future__ import annotations

from typing import Any

import graphql
import pytest

from exchange_stream.read import graphql as read
from exchange_stream.read.plan import Fallback, compile_plan, run_plan

CODES = [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}]
ENCOUNTER = {
    "encounter_id": "e-1",
    "facility_id": None,
    "encounter_class": "inpatient",
    "admit_time": "2024-03-01T08:30:00Z",
    "discharge_time": None,
    "diagnosis_codes": CODES,
}


def _schema(encounters: list[dict[str, Any]]) -> graphql.GraphQLSchema:
    """The contract's schema with canned root answers shaped as the real resolvers shape them."""
    schema = graphql.build_schema(read.SCHEMA_PATH.read_text(encoding="utf-8"))
    query = schema.query_type
    assert query is not None

    async def encounters_(_: Any, info: Any, patientToken: str, **__: Any) -> list:
        return [
            read.encounter(e, "rt1.x.1.t", f"ri1.x.1.{i}", f"rc1.x.1.{i}")
            for i, e in enumerate(encounters)
        ]

    async def patient_(_: Any, info: Any, patientToken: str) -> dict | None:
        return {"patientToken": patientToken, "dob": None} if patientToken else None

    query.fields["encounters"].resolve = encounters_
    query.fields["patient"].resolve = patient_
    schema.type_map["LabValue"].resolve_type = read._lab_value_type
    return schema


async def _both(schema: graphql.GraphQLSchema, text: str, variables: dict) -> tuple[Any, Any]:
    document = graphql.parse(text)
    assert not graphql.validate(schema, document)
    plan = compile_plan(schema, document)
    assert plan is not None, "a plain query compiles"
    fast = await run_plan(schema, plan, object(), variables)
    slow = await graphql.execute(schema, document, variable_values=variables)
    return fast, {"data": slow.data}


@pytest.mark.parametrize(
    "text",
    [
        "query ($t: ID!) { encounters(patientToken: $t) { encounterId patientToken facilityId "
        "admitTime dischargeTime } }",
        "query ($t: ID!) { a: encounters(patientToken: $t, first: 5) { id: encounterId "
        "__typename cursor diagnosisCodes { system code } } "
        "p: patient(patientToken: $t) { dob patientToken } }",
        '{ patient(patientToken: "") { dob } encounters(patientToken: "x") { encounterClass } }',
    ],
)
async def test_a_plain_query_gets_graphql_cores_answer(text: str) -> None:
    schema = _schema([ENCOUNTER, {**ENCOUNTER, "encounter_id": "e-2", "facility_id": "f-9"}])
    fast, slow = await _both(schema, text, {"t": "rt1.x.1.t"})
    assert fast == slow


async def test_a_null_where_the_schema_promises_a_value_goes_back_to_graphql_core() -> None:
    schema = _schema([{**ENCOUNTER, "encounter_class": None}])
    document = graphql.parse('{ encounters(patientToken: "x") { encounterClass } }')
    plan = compile_plan(schema, document)
    assert plan is not None
    with pytest.raises(Fallback):
        await run_plan(schema, plan, object(), {})


@pytest.mark.parametrize(
    "text",
    [
        '{ encounters(patientToken: "x") { ...E } } fragment E on Encounter { encounterId }',
        '{ encounters(patientToken: "x") { ... on Encounter { encounterId } } }',
        '{ encounters(patientToken: "x") @include(if: true) { encounterId } }',
        '{ labResults(patientToken: "x") { value { __typename } } }',
        "{ __schema { queryType { name } } }",
        '{ a: encounters(patientToken: "x") { encounterId } a: encounters(patientToken: "x") '
        "{ encounterClass } }",
        'query A { patient(patientToken: "x") { dob } } query B { patient(patientToken: "y") '
        "{ dob } }",
    ],
)
def test_anything_but_a_plain_query_stays_with_graphql_core(text: str) -> None:
    assert compile_plan(_schema([]), graphql.parse(text)) is None
