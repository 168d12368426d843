"""Runtimes for the slide path's forward passes: torch, or OpenVINO compiling the same graph.

`decision.runtime_decision` decides (pure, no torch); `graph.TileGraph` at a `Geometry` is the
one inference of a tile; `select.open_runtime(model, RuntimeSpec)` -> `OpenedRuntime` carries a
run's decisions out, and its executors (`executor.TorchExecutor`, `executor.OpenVINOExecutor`)
run the graph. Import what you use from its module: nothing here loads torch.
"""
