"""The `okra` command line: a thin layer over `okra_core`."""
