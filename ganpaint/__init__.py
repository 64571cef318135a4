"""ganpaint: train GAN image-inpainting models (GLCIC, Context Encoders, WGAN U-Net) and DCGAN at scale."""

__version__ = "0.1.0"
