"""The API models against the seed document's examples and each validation rule."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from octave_bulk.agents.envelope import ErrorResponse
from octave_bulk.agents.fields import OutputFormat
from octave_bulk.agents.sequence import SequenceRequest, SequenceResponse
from tests.conftest import load_json


def test_seed_request_with_one_target_round_trips() -> None:
    body = load_json("seed_request.json")
    # The seed example sets both targets, which the document's own text forbids
    # ("only one of them should be set at a time"); with one of them it must round-trip.
    del body["experimentOId"]
    request = SequenceRequest.model_validate(body)
    assert request.agent_o_id == "agent_123"
    assert request.linked_in_profile == "<string>"
    assert request.output_format is OutputFormat.TEXT
    assert request.runtime_context == {"all": ""}
    assert request.to_wire() == body


def test_seed_request_with_both_targets_is_rejected_clearly() -> None:
    with pytest.raises(ValidationError, match="exactly one of agentOId or experimentOId"):
        SequenceRequest.model_validate(load_json("seed_request.json"))


@pytest.mark.parametrize("name", ["seed_example_1.json", "seed_example_2.json"])
def test_seed_runtime_examples_round_trip(name: str) -> None:
    body = load_json(name)
    assert SequenceRequest.model_validate(body).to_wire() == body


def test_seed_response_parses_and_reserialises() -> None:
    raw = load_json("seed_response.json")
    response = SequenceResponse.model_validate(raw)
    assert response.found is True
    assert response.metadata.request_id == "requestId"
    assert response.metadata.credits == 0.0
    assert response.emails[0].sections is not None
    assert response.data is not None and response.data.product is not None
    assert response.data.product.data is not None
    assert response.data.product.data.capabilities == ["Capability 1", "Capability 2"]
    assert response.data.output_type == "SCOPED_PLAYBOOK"
    dumped = response.model_dump(by_alias=True, mode="json", exclude_unset=True)
    assert dumped == raw


def test_response_keeps_unknown_fields_and_tolerates_missing_ones() -> None:
    raw = {
        "_metadata": {"requestId": "x", "usage": 2, "newThing": {"a": 1}},
        "found": True,
        "data": {"emails": [{"subject": "Hi", "tone": "warm"}], "segment": {"oId": "sg_1"}},
        "future": [1, 2],
    }
    response = SequenceResponse.model_validate_json(orjson.dumps(raw))
    assert response.metadata.credits == 2.0
    assert response.emails[0].subject == "Hi"
    assert response.model_dump(by_alias=True, mode="json", exclude_unset=True) == raw


def test_response_requires_found_and_metadata() -> None:
    with pytest.raises(ValidationError, match="found"):
        SequenceResponse.model_validate({"_metadata": {}})
    with pytest.raises(ValidationError, match="_metadata"):
        SequenceResponse.model_validate({"found": True})


def test_error_envelope() -> None:
    raw = {
        "_metadata": {"usage": 0, "requestId": "r", "message": "Unauthorized", "timestamp": "t"},
        "message": "Invalid API key",
    }
    error = ErrorResponse.model_validate(raw)
    assert error.message == "Invalid API key"
    assert error.metadata.message == "Unauthorized"


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"runtimeContext": {"first": "x"}}, "runtimeContext", "key 'first' is not allowed"),
        ({"runtimeInstructions": {"8": "x"}}, "runtimeInstructions", "key '8' is not allowed"),
        ({"runtimeContext": {"all": 3}}, "runtimeContext.all", "valid string"),
        ({"outputFormat": "pdf"}, "outputFormat", "'text', 'html' or 'markdown'"),
        ({"emial": "a@b.c"}, "emial", "Extra inputs are not permitted"),
        ({"customContext": {"persona": {}}}, "customContext.persona.oId", "Field required"),
        ({"includeFullAnnotation": "maybe"}, "includeFullAnnotation", "valid boolean"),
    ],
)
def test_each_request_rule_names_its_field(
    body: dict[str, object], field: str, fragment: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        SequenceRequest.model_validate({"agentOId": "ca_1", **body})
    errors = caught.value.errors()
    assert len(errors) == 1
    assert ".".join(str(p) for p in errors[0]["loc"]) == field
    assert fragment in errors[0]["msg"]


def test_neither_target_is_rejected() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        SequenceRequest(email="a@b.c")


def test_experiment_alone_is_accepted_and_python_names_work() -> None:
    request = SequenceRequest(experiment_o_id="ae_1", first_name="Ann", output_format="markdown")
    assert request.to_wire() == {
        "experimentOId": "ae_1",
        "firstName": "Ann",
        "outputFormat": "markdown",
    }
    assert request.runtime_context is None
