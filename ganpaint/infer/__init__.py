"""Inference: opening an export, the windows the net runs on, blending, reading and writing
images, `ganpaint inpaint` and `ganpaint sample`. Nothing here reaches the training loop or the
evaluation code; evaluation and the page build on it."""
