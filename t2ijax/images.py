"""Image grids and PNG files for samples."""

import os

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8, truncating as the official code's astype(uint8)."""
  x = (np.asarray(images, np.float32) + 1.0) * 127.5
  return np.clip(x, 0, 255).astype(np.uint8)


def grid(images: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
  """(N, H, W, 3) uint8 -> one (rows*(H+pad), ncols*(W+pad), 3) image, white gaps."""
  n, h, w, c = images.shape
  nrows = -(-n // ncols)
  out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, q = divmod(i, ncols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h,
        pad + q * (w + pad):pad + q * (w + pad) + w] = img
  return out


def save_png(path: str, image: np.ndarray) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  Image.fromarray(image).save(tmp, format="PNG")
  os.replace(tmp, path)   # never leave a half-written PNG behind
  return path
