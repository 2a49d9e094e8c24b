"""The syscall ABI."""
