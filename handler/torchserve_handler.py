"""The design card's TorchServe entry file (``torch-model-archiver --handler handler/torchserve_handler.py``).

The adapter itself is :mod:`handler.adapters.torchserve_handler`; TorchServe takes the one class DEFINED in the
entry module, so this file defines a subclass of it and nothing else. The ``handler`` package comes from the
environment TorchServe runs in (``pip install .[serve]``) or from the archive (``scripts/build_archive.py``).
"""

from handler.adapters.torchserve_handler import StableDiffusionXLHandler as Adapter


class StableDiffusionXLHandler(Adapter):
    """:class:`handler.adapters.torchserve_handler.StableDiffusionXLHandler`, as TorchServe's entry point."""
