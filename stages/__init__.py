"""The pipeline's stages: one module per step of flows/train_flow.py, each a small typed function
over the `trainflow` library. Nothing here imports metaflow: the flow moves data between them.

  prepare     start     snapshot and split the data, create the Optuna study
  hpo_worker  train     one foreach worker: ask, train, report and tell its trials
  select      join      the best complete trial
  export      export    ONNX export and the PyTorch-vs-ONNX parity gate
  quantize    quantize  the INT8 recipe search and its accuracy gate
  publish     publish   the package, its registration, lineage, cost and Parquet records
  summary     end       what the run prints about its package
"""
