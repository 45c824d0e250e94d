"""How the Ray placement of the training ranks reads the end of one node's torchrun: its exit code,
or the task lost with its node (a machine failure), which fails the attempt in one log line
instead of a traceback (the entrypoint then restarts it)."""

import types

import ray.exceptions

from launcher.ray_torchrun import _node_exit_code


def _ray(result):
    def get(ref):
        if isinstance(result, Exception):
            raise result
        return result

    return types.SimpleNamespace(get=get, exceptions=ray.exceptions)


def test_a_torchrun_lost_with_its_node_fails_the_attempt_in_one_line(capsys):
    lost = ray.exceptions.NodeDiedError("Task failed because the node it was running on is dead or unavailable. "
                                        "Node IP: 10.0.0.2\nmore detail")
    assert _node_exit_code(_ray(lost), "ref", 1, [0]) == 1
    out = capsys.readouterr().out
    assert out == ("[lamamba] node rank 1: torchrun was lost (NodeDiedError: Task failed because the node it was "
                   "running on is dead or unavailable. Node IP: 10.0.0.2); stopping node rank(s) 0; this attempt "
                   "failed\n")


def test_a_torchrun_exit_code_is_passed_on_and_named_when_it_failed(capsys):
    assert _node_exit_code(_ray(0), "ref", 0, [1]) == 0
    assert capsys.readouterr().out == ""
    assert _node_exit_code(_ray(3), "ref", 0, []) == 3
    assert capsys.readouterr().out == "[lamamba] node rank 0: torchrun exited with code 3; this attempt failed\n"
