"""Templates for slurm; see the README in this folder."""
