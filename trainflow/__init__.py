"""trainflow: the library under the pipeline (no Metaflow here; flows/ holds the flow, stages/ its
steps). Subpackages by job, in the order they build on each other (a group imports only the
groups before it; tests/test_layout.py holds them to it):

  core      errors, durable file writes, the run configuration, the names of every file and folder
            trainflow writes (layout), free-space checks, the fault hook, package pins
  records   Parquet records and their DuckDB queries, run status, cost, W&B tracking
  tasks     task heads: from model outputs to classes, probabilities and metrics (NumPy only)
  data      the dataset snapshot and the run context
  training  the base model, modeling and freezing, the training loop, the GPU fast path,
            checkpoints and resume, packed and data-parallel workers
  search    the Optuna study shared by foreach workers, the worker loop, heartbeats, the journal
  convert   ONNX export, the parity gate, ONNX Runtime sessions, INT8 graphs and the recipe search
  release   package metadata, format and verification, publishing, the registry, the loader,
            lineage, the model card, retention
  app       the `trainflow` command, the pre-flight check, card contents, the dashboard

`trainflow.package` is the consumer's entry point (`trainflow.package.load`).
"""
