"""The controller: schedules QatVirtualMachines onto nodes and their exact VFs."""
