"""A real cluster on one Linux machine, for the tests and for trying the launcher by hand.

Hosts are network namespaces on a private bridge (:mod:`cluster.local.hosts`), each with its own
address, hostname and ``/etc/hosts``; on them run munge + a SLURM controller and one ``slurmd``
per host (:mod:`cluster.local.slurm`) and a Ray head with workers (:mod:`cluster.local.ray`).
Everything is started as child processes and stopped by PID; ``python -m cluster.local`` (or
``scripts/local_cluster.sh``) brings one up until Ctrl-C. Needs root, iproute2, util-linux's
``unshare``, and Debian's ``slurm-wlm`` + ``munge`` for SLURM; :func:`unavailable` says what is
missing.
"""

from cluster.local.hosts import Host, Network, unavailable

__all__ = ["Host", "Network", "unavailable"]
