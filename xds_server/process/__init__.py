"""The control plane and the assembly of the `serve` process around it."""
