"""One row of the INT8 recipe search: what the quantize step tried and what became of it
(trainflow/convert/quantize.py writes the rows, metadata.json keeps them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RecipeOutcome(BaseModel):
    """One row of the search table. `status`: chosen, passed (but slower than FP32, or beaten by
    an earlier one), failed (the gate), screened-out, error, or not-tried (the search had stopped).
    metadata.json `quantization.search` holds these rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    passed: bool
    status: str = "not-tried"
    mode: str = "static"
    graph: str | None = None
    screen_accuracy: float | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    fp32_p50_ms: float | None = None
    size_bytes: int | None = None
    batch_max_diff: float | None = None  # largest |logit| change of a test text alone vs in a batch
    batch_label_agreement: float | None = None  # share of test texts whose label is the same both ways
    quantized_nodes: int | None = None
    fp32_weight_nodes: list[str] = Field(default_factory=list)
    node_counts: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.name}: failed to quantize ({self.error})"
        if self.accuracy is None:
            screen = "" if self.screen_accuracy is None else f" (screening accuracy {self.screen_accuracy:.4f})"
            return f"{self.name}: {self.status}{screen}"
        acc = f"accuracy {self.accuracy:.4f} (drop {(self.accuracy_drop or 0) * 100:+.2f} points)"
        if self.batch_max_diff is not None:
            acc += (f", alone vs batched max |logit diff| {self.batch_max_diff:.3g} (labels agree on"
                    f" {(self.batch_label_agreement or 0) * 100:.1f} %)")  # fmt: skip
        lat = f"batch-1 p50 {self.p50_ms:.2f} ms vs FP32 {self.fp32_p50_ms:.2f} ms" if self.p50_ms else "not timed"
        return f"{self.name}: {acc}, {lat}, {(self.size_bytes or 0) / 1e6:.1f} MB, {self.status}"
