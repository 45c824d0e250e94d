"""Templates for kuberay; see the README in this folder."""
