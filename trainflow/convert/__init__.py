"""From a trained model to CPU models: ONNX export, the parity gate, ONNX Runtime sessions, INT8."""
