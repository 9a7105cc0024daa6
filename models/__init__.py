"""Model definitions and checkpoint layouts (torch-free)."""
