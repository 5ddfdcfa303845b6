"""Test beds that need more than the simulated kernel: a real Linux guest under QEMU."""
