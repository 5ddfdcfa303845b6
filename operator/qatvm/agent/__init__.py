"""The node agent: inventory, VF binding and libvirt domains for the VMs placed on one node."""
