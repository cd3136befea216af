"""Property-based checks of request parsing: any JSON value either parses into a request within bounds or
raises InvalidRequest naming a field; nothing else escapes, and nothing is silently corrected."""

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from handler.contract.decode import decode_row
from handler.contract.errors import InvalidRequest
from handler.contract.fields import FIELD_NAMES as FIELDS
from handler.contract.fields import MAX_SEED, OUTPUT_FORMATS
from handler.contract.parse import parse_request
from handler.contract.request import Limits

LIMITS = Limits()
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
field_values = st.fixed_dictionaries({}, optional={name: json_values | st.integers(-(2**70), 2**70) for name in FIELDS})


@settings(max_examples=400, deadline=None)
@given(payload=field_values)
def test_any_payload_parses_within_bounds_or_is_rejected_with_a_field(payload):
    try:
        request = parse_request(payload)
    except InvalidRequest as exc:
        assert exc.message
        assert exc.field is None or exc.field in FIELDS or exc.field in payload
        return
    assert request.prompt == payload["prompt"] and request.prompt.strip()
    assert 1 <= request.num_inference_steps <= LIMITS.max_inference_steps
    assert 0 <= request.guidance_scale <= LIMITS.max_guidance_scale and math.isfinite(request.guidance_scale)
    for size in (request.width, request.height):
        assert LIMITS.min_size <= size <= LIMITS.max_size and size % LIMITS.size_multiple == 0
    assert request.seed is None or 0 <= request.seed <= MAX_SEED
    assert request.output_format in OUTPUT_FORMATS
    for name, value in payload.items():  # nothing given was changed on the way (ints may widen to float)
        assert request.parameters()[name] == value


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_decode_to_json_or_a_clear_invalid_request(body):
    try:
        value = decode_row({"body": body})
    except InvalidRequest as exc:
        assert exc.message.startswith("request body")
        return
    json.dumps(value)  # whatever decodes is plain JSON data


@settings(max_examples=200, deadline=None)
@given(width=st.integers(-10_000, 10_000), height=st.integers(-10_000, 10_000))
def test_sizes_are_accepted_exactly_when_in_bounds_and_aligned(width, height):
    def valid(size):
        return LIMITS.min_size <= size <= LIMITS.max_size and size % LIMITS.size_multiple == 0

    try:
        request = parse_request({"prompt": "p", "width": width, "height": height})
    except InvalidRequest as exc:
        assert not (valid(width) and valid(height))
        assert exc.field == ("width" if not valid(width) else "height")
        assert str(exc.value) in exc.message
    else:
        assert valid(width) and valid(height) and (request.width, request.height) == (width, height)
