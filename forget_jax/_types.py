"""Shared jaxtyping aliases (one place, as in diffrax's `_custom_types.py`)."""

from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

Scalar = Float[Array, ""]
Vector = Float[Array, " dim"]
Points = Float[Array, "n dim"]
BoolScalar = Bool[Array, ""]
IntScalar = Int[Array, ""]

__all__ = ["Array", "Bool", "BoolScalar", "Float", "Int", "IntScalar", "PRNGKeyArray", "Points", "Scalar", "Vector"]
