"""Experiments as jobs: evaluation sweeps over checkpoints x guidance scales x samplers, their
results table (CSV / JSON / TensorBoard) and plots (FID vs step, vs guidance scale, vs GFLOPs).

- ``config``: ``EvalSweepConfig`` (``lamamba evaluate-sweep``);
- ``eval_sweep``: the sweep job, composing the sample job and the evaluator;
- ``results``: the results table and its TensorBoard scalars;
- ``plots``: the PNG plots drawn from that table.
"""
