"""trainflow: the library under the pipeline (no Metaflow here; flows/ holds the flow, stages/ its
steps). Modules by concern:

  config, errors             the run configuration (pydantic) and one exception per failure mode
  io, diskspace, faults      durable writes and versioned folders, free-space checks, the test hook
  data                       dataset snapshot: read, validate, checksum, split
  modeling, train, accel,    model and ordinal head, the training loop, the GPU fast path,
  checkpoints, ddp           checkpoints, data-parallel parts
  hpo                        Optuna study shared by foreach workers, heartbeats, trial records
  export, parity,            ONNX export, the PyTorch-vs-ONNX gate, ONNX Runtime sessions,
  onnx_model, quantize       the INT8 recipe search
  metadata, package,         package metadata.json (typed), writing and verifying packages,
  records, registry,         Parquet records and named queries, promotion and rollback,
  retention, lineage, cost   cleanup, lineage chain, run cost
  tracking, reports, cli     W&B, card contents, the `trainflow` command
"""
