"""Response schemas: what the OpenAPI docs show for each field."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Rle(BaseModel):
    size: list[int] = Field(description="[height, width] of the mask")
    counts: str = Field(description="COCO compressed RLE string (pycocotools.mask.decode reads it)")


class ClassMask(BaseModel):
    class_id: int = Field(description="index into the plan's classes")
    class_name: str
    area: int = Field(description="pixels labelled with this class (a multilabel task's classes may overlap)")
    mean_confidence: float = Field(description="mean ensemble probability of this class over its pixels")
    rle: Rle


class SegmentJson(BaseModel):
    width: int
    height: int
    classes: list[ClassMask] = Field(description="one entry per class present in the label map (or the masks)")


class Ready(BaseModel):
    ready: bool
    providers: list[str] = Field(description="ONNX Runtime execution providers actually active")
    requested_providers: list[str]
    fell_back_to_cpu: bool = Field(description="true when a GPU provider was asked for but ONNX Runtime runs on CPU")
    runtime: str = Field("", description="onnxruntime or openvino")
    device: str = Field("", description="cpu or cuda")
    precision: str = Field("", description="fp32, bf16 or fp16: what actually runs")
    members: int
    forward_passes_per_image: int
    profiles: dict[str, int] = Field(default_factory=dict, description="profile name -> forward passes per image")


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong with the request and what is allowed")
