"""Runtimes for the slide path's forward passes: torch, or OpenVINO compiling the same graph.

`decision` decides (pure, no torch); `select.open_runtime` carries a run's `RuntimeSpec` out,
and its executors run the one `graph.TileGraph`; `tile_io` holds what crosses to the engine,
so an OpenVINO run never imports torch. Import from the modules: nothing here loads torch.
"""
