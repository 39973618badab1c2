"""Datasets: one module per dataset plus the registry, prepared format, splits and loaders."""
