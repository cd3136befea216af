import pytest

from handler.contract.decode import decode_row
from handler.contract.errors import InvalidRequest


@pytest.mark.parametrize(
    "row",
    [
        {"body": b'{"prompt": "a cat"}'},
        {"body": bytearray(b'{"prompt": "a cat"}')},
        {"body": '{"prompt": "a cat"}'},
        {"body": {"prompt": "a cat"}},  # TorchServe already decoded application/json
        {"data": b'  {"prompt": "a cat"}\n'},
    ],
)
def test_json_object_in_any_body_form(row):
    assert decode_row(row) == {"prompt": "a cat"}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"body": b"\xff\xfe{}"}, "request body is not valid UTF-8: byte 0xff at position 0"),
        ({"body": b'{"prompt": "a",}'}, "request body is not valid JSON: Expecting property name"),
        ({"body": b'{"prompt": "a"'}, "line 1 column 15"),
        ({"body": b'{"prompt": "a", "prompt": "b"}'}, "request body has the key `prompt` more than once"),
        ({"body": b'{"prompt": "a", "guidance_scale": NaN}'}, "`NaN` is not a JSON number"),
        ({"body": b'{"prompt": "a", "seed": -Infinity}'}, "`-Infinity` is not a JSON number"),
        ({"body": b"[" * 100_000 + b"]" * 100_000}, "nested too deeply"),
        ({"body": b""}, "request body is empty"),
        ({"body": b"   "}, "request body is empty"),
        ({}, "request body is empty; send one JSON object with the header `Content-Type: application/json`"),
        ({'{"prompt": "a"}': b""}, "curl -d without it sends a form"),
        ("not a row", "unexpected request row of type str"),
    ],
)
def test_undecodable_bodies_say_why(row, message):
    with pytest.raises(InvalidRequest) as caught:
        decode_row(row)
    assert message in caught.value.message


def test_non_object_json_is_returned_for_the_schema_to_reject():
    assert decode_row({"body": b"[1, 2]"}) == [1, 2]
    assert decode_row({"body": b'"a cat"'}) == "a cat"


def test_absurdly_long_integer_literal_is_a_clear_400():
    with pytest.raises(InvalidRequest, match=r"request body is not valid JSON: .*digits"):
        decode_row({"body": b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}"})
