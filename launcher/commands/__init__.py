"""One module per `lamamba` subcommand.

A command ``a-b`` lives in module ``a_b``. Each module defines ``HELP`` (one line for the command list), ``add_arguments(parser)`` and
``run(args) -> int``. Modules import heavy dependencies (torch, ray, deepspeed) inside ``run`` so
that ``lamamba --help`` stays fast.
"""

# The order in which `lamamba --help` lists the commands.
COMMANDS = (
    "quickstart",
    "encode",
    "train",
    "sample",
    "evaluate",
    "evaluate-sweep",
    "scaling-sweep",
    "export",
    "flops",
    "doctor",
    "submit",
    "status",
    "logs",
    "cancel",
)
