"""sdxl-torchserve: serve Stable Diffusion XL on TorchServe.

Everything here but :mod:`handler.adapters.torchserve_handler` works without TorchServe installed.
"""

__version__ = "0.1.0"
