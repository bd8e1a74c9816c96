"""titok_var: compact image tokenizers (TiTok) and fast generators (MaskGIT, VAR) in JAX/Flax."""

import setuptools

setuptools.setup(
    name="titok_var",
    version="0.1.0",
    description="TiTok 1D tokenizers, MaskGIT and VAR generators in JAX/Flax with jax.sharding.",
    packages=setuptools.find_packages(include=["titok_var", "titok_var.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "chex>=0.1.90,<0.2",
        "einops>=0.8,<0.9",
        "tensorflow-cpu>=2.20,<2.22",
        "tensorflow-datasets>=4.9.9,<4.10",
        "tensorboard>=2.20,<2.22",
        "ml-collections>=1.1,<1.2",
        "clu>=0.0.12,<0.1",
        "absl-py>=2.1,<3",
        "numpy>=2.0,<3",
        "scipy>=1.11,<2",
        "pillow>=10,<14",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4"],
        "gpu": ["jax[cuda12]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        "aot": ["jax[tpu]>=0.10,<0.11"],  # libtpu: bench/aot.py compiles for TPU slices on a CPU host
    },
)
