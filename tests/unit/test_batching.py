from handler.contract.parse import parse_request
from handler.contract.request import Defaults, Limits
from handler.runtime.batching import GroupKey, group_requests

LIMITS = Limits(min_size=32)
DEFAULTS = Defaults(width=64, height=64, num_inference_steps=4)


def req(**fields):
    return parse_request({"prompt": "p", **fields}, LIMITS, DEFAULTS)


def test_same_size_requests_share_one_group_whatever_else_differs():
    requests = {
        0: req(prompt="a", seed=1),
        1: req(prompt="b", negative_prompt="blurry", output_format="jpeg", num_inference_steps=8),
        2: req(prompt="c", prompt_2="c2", num_images_per_prompt=2, guidance_scale=1.0),
    }
    groups = group_requests(requests, max_images_per_call=8)
    assert len(groups) == 1
    assert groups[0].rows == [0, 1, 2]
    assert groups[0].images == 4
    assert groups[0].key == GroupKey(64, 64)


def test_sizes_split_groups_in_order_of_first_appearance():
    requests = {0: req(), 1: req(width=128), 2: req(height=96), 3: req(num_inference_steps=8), 4: req(width=128)}
    groups = group_requests(requests, max_images_per_call=8)
    assert [g.rows for g in groups] == [[0, 3], [1, 4], [2]]


def test_groups_never_exceed_max_images_per_call():
    requests = {i: req(num_images_per_prompt=3) for i in range(5)}
    groups = group_requests(requests, max_images_per_call=8)
    assert [g.rows for g in groups] == [[0, 1], [2, 3], [4]]
    assert all(g.images <= 8 for g in groups)
