"""XLA flags that must be set before jax starts its backend (imported by t2ijax).

jax/jaxlib 0.10.2 on CPU routes some reductions through YNNPACK fusions
("__ynn_fusion") that return wrong values: for w of shape (B, T, D) and c of
shape (B, B, T, D), jit(sum(w[None] * c, -1) + sum(c, -1)) is off by ~100 for
B >= 32, while the same ops un-jitted (or in NumPy) are right. DAMSM's cosine
between words and their region contexts is exactly that pattern, so the jitted
word loss was silently wrong at batch 48. An empty fusion-type list turns the
YNNPACK fusions off; tests/test_xla_workarounds.py keeps the repro. The flag
only concerns the CPU backend, so GPU and TPU runs are unaffected.
"""

import os

_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def install() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " " + _FLAG).strip()


install()
