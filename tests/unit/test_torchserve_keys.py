"""sdxl_client.torchserve_keys without a server: TorchServe's expiry stamps, its rejection body, and the key file
read while TorchServe rewrites it. Renewal itself runs against a real TorchServe in
tests/integration/test_key_expiry.py."""

from __future__ import annotations

import json
import time

from sdxl_client.torchserve_keys import TorchServeKeys, _expiry, key_rejected

# Bodies as TorchServe 0.12 sends them (captured from a real server).
REJECTED = (
    '{\n  "code": 400,\n  "type": "InvalidKeyException",\n  "message": "Token Authorization failed. Token either '
    'incorrect, expired, or not provided correctly"\n}\n'
)


def test_java_instants_with_nanoseconds_parse_to_epoch_seconds():
    assert _expiry("2026-12-07T19:02:11.193154746Z") == 1796670131.193154746
    assert _expiry("2026-12-07T19:02:11Z") == 1796670131.0
    assert _expiry(None) is None and _expiry("soon") is None


def test_only_torchserves_key_rejection_counts_as_one():
    assert key_rejected(400, REJECTED) and key_rejected(400, REJECTED.encode())
    assert not key_rejected(400, '{"error": {"code": 400, "type": "InvalidRequest", "message": "`width` ..."}}')
    assert not key_rejected(404, '{"code": 404, "type": "ModelNotFoundException"}') and not key_rejected(400, b"")


def test_a_key_far_from_expiry_is_used_as_it_is_and_no_file_means_token_auth_off(tmp_path):
    later = time.strftime("%Y-%m-%dT%H:%M:%S.000000001Z", time.gmtime(time.time() + 3600))
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "abc", "expiration time": later}, "API": {"key": "api"}}))
    keys = TorchServeKeys(key_file, "http://127.0.0.1:9")  # nothing listens: no renewal may be tried
    assert keys.key() == "abc" and keys.headers() == {"Authorization": "Bearer abc"} and keys.renewals == 0
    assert TorchServeKeys(tmp_path / "missing.json").key() is None


def test_a_key_file_caught_mid_rewrite_is_read_again(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text("")  # TorchServe truncates before it writes
    keys = TorchServeKeys(key_file)
    import threading

    writer = threading.Timer(0.1, lambda: key_file.write_text(json.dumps({"inference": {"key": "new"}})))
    writer.start()
    assert keys.key() == "new"
    writer.join()
