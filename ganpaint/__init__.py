"""ganpaint: train GAN image-inpainting models (GLCIC, Context Encoders, WGAN U-Net) and DCGAN at scale.

The public API (`ganpaint.train`, `ganpaint.load`, `ganpaint.inpaint`) lives in ganpaint/api.py and
is imported on first use, so `import ganpaint` stays light.
"""

__version__ = "0.1.0"
__all__ = ["inpaint", "load", "train"]


def __getattr__(name: str):
    if name in __all__:
        from ganpaint import api

        return getattr(api, name)
    raise AttributeError(f"module 'ganpaint' has no attribute {name!r}")
