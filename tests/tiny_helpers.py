"""Helpers shared by the tests that run methods on tiny pipelines."""

from erasekit.models.delta import snapshot


def snapshot_weights(pipe, components=("unet", "text_encoder")) -> dict:
    """A copy of every parameter of the given pipeline components, keyed ``component.name``."""
    names = [f"{c}.{n}" for c in components for n, _ in getattr(pipe, c).named_parameters()]
    return snapshot(pipe, names)
