"""qatvm: run virtual machines with Intel QAT SR-IOV virtual functions on Kubernetes."""

__version__ = "0.1.0"
