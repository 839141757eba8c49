"""`python -m megazip`: the `megazip` command, e.g. under torchrun:
`torchrun --nproc_per_node=2 -m megazip eval DATA`."""

from megazip.cli.main import main

if __name__ == "__main__":
    main(prog_name="megazip")
