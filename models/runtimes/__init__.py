"""Runtimes for the slide path's forward passes: torch, or OpenVINO compiling the same graph.

`decision.runtime_decision` decides (pure, no torch); `graph.TileGraph` at a `Geometry` is the
one inference of a tile; `select.open_runtime(model, RuntimeSpec)` -> `OpenedRuntime` carries a
run's decisions out, and its executors (`executor.TorchExecutor`,
`openvino_runtime.OpenVINOExecutor`) run the graph; `tile_io` holds what crosses between them
and the engine (`Geometry`, numpy `ReducedOutputs`), so an OpenVINO run never imports torch.
Import what you use from its module: nothing here loads torch.
"""
