"""What an agent does on its own node: find QAT VFs in sysfs and move them between drivers."""
