"""The `lamamba` command line: runs any job locally or submits it to SLURM or a Ray cluster."""
