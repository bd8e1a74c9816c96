"""Pixel reconstruction losses (images in [0, 1])."""

import jax.numpy as jnp

RECONSTRUCTION_LOSSES = ("l1", "l2")


def reconstruction_loss(target, prediction, kind: str = "l2"):
    """Mean absolute (l1) or squared (l2) error, computed in float32."""
    diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    if kind == "l2":
        return jnp.mean(jnp.square(diff))
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    raise ValueError(f"unknown reconstruction loss {kind!r}; expected one of {RECONSTRUCTION_LOSSES}")
