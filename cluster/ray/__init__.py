"""Templates for ray; see the README in this folder."""
