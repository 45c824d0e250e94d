"""Cluster templates and configs: SLURM (sbatch), Ray (AWS autoscaler) and KubeRay manifests."""
