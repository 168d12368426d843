"""Inference: plan a slide's chunks, read and decode them (a read source), run the model,
stitch the cores: one engine (`engine.run_engine`), locally or in bands on a Dask cluster
(`band_runner.run_bands`). Import what you use from its module: nothing here loads torch.
"""
