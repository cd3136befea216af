"""A small Python client (and CLI) for the sdxl-torchserve endpoint. Needs only ``requests`` and ``tqdm``.

from sdxl_client import SDXLClient
client = SDXLClient("http://127.0.0.1:8080")
for event in client.stream({"prompt": "a red fox in snow", "num_inference_steps": 20}):
    print(event["event"], event.get("step"))
"""

from .client import APIError, SDXLClient, read_token

__all__ = ["APIError", "SDXLClient", "read_token"]
