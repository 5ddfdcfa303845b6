"""Typed models of the qatvm.io/v1alpha1 objects."""
