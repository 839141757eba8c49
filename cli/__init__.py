"""The `megazip` command line (installed as the package `megazip.cli`)."""
