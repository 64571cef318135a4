"""ganpaint: train GAN image-inpainting models (GLCIC, Context Encoders, WGAN U-Net) and DCGAN at scale.

The public API (`ganpaint.train`, `ganpaint.load`, `ganpaint.inpaint`) lives in ganpaint/api.py and
is imported on first use, so `import ganpaint` stays light (no torch): so are the model families,
when the first config that names one is read.
"""

import importlib

from ganpaint import config as _config

__version__ = "0.1.0"
__all__ = ["inpaint", "load", "train"]


def _import_families() -> None:
    """Import ganpaint/models/ (torch and every net): each family module registers its settings
    and rules with ganpaint.config there, which itself imports no model code."""
    importlib.import_module("ganpaint.models")


_config.find_families_with(_import_families)


def __getattr__(name: str):
    if name in __all__:
        from ganpaint import api

        return getattr(api, name)
    raise AttributeError(f"module 'ganpaint' has no attribute {name!r}")
