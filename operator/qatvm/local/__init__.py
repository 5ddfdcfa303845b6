"""The local cluster: a real control plane plus simulated QAT nodes on one machine."""
