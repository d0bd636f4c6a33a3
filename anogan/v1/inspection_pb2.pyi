import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_FAST: _ClassVar[Mode]
    MODE_SEARCH: _ClassVar[Mode]
    MODE_CASCADE: _ClassVar[Mode]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_PASS: _ClassVar[Verdict]
    VERDICT_FAIL: _ClassVar[Verdict]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_FAST: _ClassVar[Stage]
    STAGE_SEARCH: _ClassVar[Stage]

class MapEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAP_ENCODING_UNSPECIFIED: _ClassVar[MapEncoding]
    MAP_ENCODING_PNG: _ClassVar[MapEncoding]
    MAP_ENCODING_FLOAT16: _ClassVar[MapEncoding]

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_UINT16: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]

class OperatorLabel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATOR_LABEL_UNSPECIFIED: _ClassVar[OperatorLabel]
    OPERATOR_LABEL_GOOD: _ClassVar[OperatorLabel]
    OPERATOR_LABEL_DEFECT: _ClassVar[OperatorLabel]

class FeedbackOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_OUTCOME_UNSPECIFIED: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_COLLECTED: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_HELD: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_KEPT: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_LEARNT: _ClassVar[FeedbackOutcome]
MODE_UNSPECIFIED: Mode
MODE_FAST: Mode
MODE_SEARCH: Mode
MODE_CASCADE: Mode
VERDICT_UNSPECIFIED: Verdict
VERDICT_PASS: Verdict
VERDICT_FAIL: Verdict
STAGE_UNSPECIFIED: Stage
STAGE_FAST: Stage
STAGE_SEARCH: Stage
MAP_ENCODING_UNSPECIFIED: MapEncoding
MAP_ENCODING_PNG: MapEncoding
MAP_ENCODING_FLOAT16: MapEncoding
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_UINT16: DataType
DATA_TYPE_FLOAT32: DataType
OPERATOR_LABEL_UNSPECIFIED: OperatorLabel
OPERATOR_LABEL_GOOD: OperatorLabel
OPERATOR_LABEL_DEFECT: OperatorLabel
FEEDBACK_OUTCOME_UNSPECIFIED: FeedbackOutcome
FEEDBACK_OUTCOME_COLLECTED: FeedbackOutcome
FEEDBACK_OUTCOME_HELD: FeedbackOutcome
FEEDBACK_OUTCOME_KEPT: FeedbackOutcome
FEEDBACK_OUTCOME_LEARNT: FeedbackOutcome

class InspectionConfig(_message.Message):
    __slots__ = ("model", "mode", "search_steps", "provisional_results", "return_residual_map", "map_encoding")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_STEPS_FIELD_NUMBER: _ClassVar[int]
    PROVISIONAL_RESULTS_FIELD_NUMBER: _ClassVar[int]
    RETURN_RESIDUAL_MAP_FIELD_NUMBER: _ClassVar[int]
    MAP_ENCODING_FIELD_NUMBER: _ClassVar[int]
    model: str
    mode: Mode
    search_steps: int
    provisional_results: bool
    return_residual_map: bool
    map_encoding: MapEncoding
    def __init__(self, model: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ..., search_steps: _Optional[int] = ..., provisional_results: _Optional[bool] = ..., return_residual_map: _Optional[bool] = ..., map_encoding: _Optional[_Union[MapEncoding, str]] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("data", "data_type", "height", "width", "channels")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    data_type: DataType
    height: int
    width: int
    channels: int
    def __init__(self, data: _Optional[bytes] = ..., data_type: _Optional[_Union[DataType, str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class EncodedImage(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("frame_id", "sequence", "capture_time", "raw", "encoded", "mode")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    sequence: int
    capture_time: _timestamp_pb2.Timestamp
    raw: RawImage
    encoded: EncodedImage
    mode: Mode
    def __init__(self, frame_id: _Optional[str] = ..., sequence: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., encoded: _Optional[_Union[EncodedImage, _Mapping]] = ..., mode: _Optional[_Union[Mode, str]] = ...) -> None: ...

class StreamInspectRequest(_message.Message):
    __slots__ = ("config", "frame", "batch")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    config: InspectionConfig
    frame: Frame
    batch: FrameBatch
    def __init__(self, config: _Optional[_Union[InspectionConfig, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., batch: _Optional[_Union[FrameBatch, _Mapping]] = ...) -> None: ...

class FrameBatch(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...

class StreamInspectResponse(_message.Message):
    __slots__ = ("result", "results")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    result: InspectionResult
    results: _containers.RepeatedCompositeFieldContainer[InspectionResult]
    def __init__(self, result: _Optional[_Union[InspectionResult, _Mapping]] = ..., results: _Optional[_Iterable[_Union[InspectionResult, _Mapping]]] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("config", "frame")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    config: InspectionConfig
    frame: Frame
    def __init__(self, config: _Optional[_Union[InspectionConfig, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class InspectResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: InspectionResult
    def __init__(self, result: _Optional[_Union[InspectionResult, _Mapping]] = ...) -> None: ...

class ResidualMap(_message.Message):
    __slots__ = ("data", "height", "width")
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    height: int
    width: int
    def __init__(self, data: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class AnomalyMap(_message.Message):
    __slots__ = ("height", "width", "png", "png_scale", "float16_data", "pixel_threshold", "regions", "reconstruction_png")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    PNG_SCALE_FIELD_NUMBER: _ClassVar[int]
    FLOAT16_DATA_FIELD_NUMBER: _ClassVar[int]
    PIXEL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_PNG_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    png: bytes
    png_scale: float
    float16_data: bytes
    pixel_threshold: float
    regions: _containers.RepeatedCompositeFieldContainer[Region]
    reconstruction_png: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., png: _Optional[bytes] = ..., png_scale: _Optional[float] = ..., float16_data: _Optional[bytes] = ..., pixel_threshold: _Optional[float] = ..., regions: _Optional[_Iterable[_Union[Region, _Mapping]]] = ..., reconstruction_png: _Optional[bytes] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("top", "left", "height", "width", "peak", "area")
    TOP_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PEAK_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    top: int
    left: int
    height: int
    width: int
    peak: float
    area: int
    def __init__(self, top: _Optional[int] = ..., left: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., peak: _Optional[float] = ..., area: _Optional[int] = ...) -> None: ...

class InspectionResult(_message.Message):
    __slots__ = ("frame_id", "sequence", "capture_time", "verdict", "score", "residual_score", "feature_score", "threshold", "stage", "search_steps", "model", "model_version", "queue_time", "compute_time", "residual_map", "error", "mode", "provisional", "threshold_search_steps", "threshold_target_fpr", "anomaly_map", "tiles", "tiles_searched")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_STEPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_MAP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PROVISIONAL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SEARCH_STEPS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_MAP_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    TILES_SEARCHED_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    sequence: int
    capture_time: _timestamp_pb2.Timestamp
    verdict: Verdict
    score: float
    residual_score: float
    feature_score: float
    threshold: float
    stage: Stage
    search_steps: int
    model: str
    model_version: str
    queue_time: _duration_pb2.Duration
    compute_time: _duration_pb2.Duration
    residual_map: ResidualMap
    error: _status_pb2.Status
    mode: Mode
    provisional: bool
    threshold_search_steps: int
    threshold_target_fpr: float
    anomaly_map: AnomalyMap
    tiles: int
    tiles_searched: int
    def __init__(self, frame_id: _Optional[str] = ..., sequence: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., score: _Optional[float] = ..., residual_score: _Optional[float] = ..., feature_score: _Optional[float] = ..., threshold: _Optional[float] = ..., stage: _Optional[_Union[Stage, str]] = ..., search_steps: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., queue_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., compute_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., residual_map: _Optional[_Union[ResidualMap, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., mode: _Optional[_Union[Mode, str]] = ..., provisional: _Optional[bool] = ..., threshold_search_steps: _Optional[int] = ..., threshold_target_fpr: _Optional[float] = ..., anomaly_map: _Optional[_Union[AnomalyMap, _Mapping]] = ..., tiles: _Optional[int] = ..., tiles_searched: _Optional[int] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "version", "format_version", "channels", "height", "width", "latent_dim", "threshold", "default_search_steps", "search_learning_rate", "has_encoder", "modes", "default_mode", "device", "create_time", "feature_weight", "tiling", "fast_threshold", "score_gap", "cascade_margin", "calibrated_search_steps", "calibrated_search_learning_rate", "search_overridden", "calibrated_budgets", "fast_path_backend", "search_precision", "search_slots", "search_cuda_graphs", "memory")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SEARCH_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    HAS_ENCODER_FIELD_NUMBER: _ClassVar[int]
    MODES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FEATURE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TILING_FIELD_NUMBER: _ClassVar[int]
    FAST_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SCORE_GAP_FIELD_NUMBER: _ClassVar[int]
    CASCADE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_SEARCH_STEPS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_SEARCH_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_BUDGETS_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_BACKEND_FIELD_NUMBER: _ClassVar[int]
    SEARCH_PRECISION_FIELD_NUMBER: _ClassVar[int]
    SEARCH_SLOTS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_CUDA_GRAPHS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    format_version: int
    channels: int
    height: int
    width: int
    latent_dim: int
    threshold: float
    default_search_steps: int
    search_learning_rate: float
    has_encoder: bool
    modes: _containers.RepeatedScalarFieldContainer[Mode]
    default_mode: Mode
    device: str
    create_time: _timestamp_pb2.Timestamp
    feature_weight: float
    tiling: Tiling
    fast_threshold: float
    score_gap: float
    cascade_margin: float
    calibrated_search_steps: int
    calibrated_search_learning_rate: float
    search_overridden: bool
    calibrated_budgets: _containers.RepeatedScalarFieldContainer[int]
    fast_path_backend: str
    search_precision: str
    search_slots: int
    search_cuda_graphs: bool
    memory: MemoryScorer
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., format_version: _Optional[int] = ..., channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., latent_dim: _Optional[int] = ..., threshold: _Optional[float] = ..., default_search_steps: _Optional[int] = ..., search_learning_rate: _Optional[float] = ..., has_encoder: _Optional[bool] = ..., modes: _Optional[_Iterable[_Union[Mode, str]]] = ..., default_mode: _Optional[_Union[Mode, str]] = ..., device: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feature_weight: _Optional[float] = ..., tiling: _Optional[_Union[Tiling, _Mapping]] = ..., fast_threshold: _Optional[float] = ..., score_gap: _Optional[float] = ..., cascade_margin: _Optional[float] = ..., calibrated_search_steps: _Optional[int] = ..., calibrated_search_learning_rate: _Optional[float] = ..., search_overridden: _Optional[bool] = ..., calibrated_budgets: _Optional[_Iterable[int]] = ..., fast_path_backend: _Optional[str] = ..., search_precision: _Optional[str] = ..., search_slots: _Optional[int] = ..., search_cuda_graphs: _Optional[bool] = ..., memory: _Optional[_Union[MemoryScorer, _Mapping]] = ...) -> None: ...

class MemoryScorer(_message.Message):
    __slots__ = ("extractor", "rows", "dim", "stride", "backend")
    EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    extractor: str
    rows: int
    dim: int
    stride: int
    backend: str
    def __init__(self, extractor: _Optional[str] = ..., rows: _Optional[int] = ..., dim: _Optional[int] = ..., stride: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class Tiling(_message.Message):
    __slots__ = ("patch", "stride", "scale", "aggregate", "top_k", "pixel_threshold")
    PATCH_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PIXEL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    patch: int
    stride: int
    scale: float
    aggregate: str
    top_k: int
    pixel_threshold: float
    def __init__(self, patch: _Optional[int] = ..., stride: _Optional[int] = ..., scale: _Optional[float] = ..., aggregate: _Optional[str] = ..., top_k: _Optional[int] = ..., pixel_threshold: _Optional[float] = ...) -> None: ...

class GetServerStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerStatsResponse(_message.Message):
    __slots__ = ("models", "worker")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStats]
    worker: int
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ..., worker: _Optional[int] = ...) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("model", "search_batches", "search_slot_steps", "max_search_batch", "active_slots", "slot_capacity", "queued_searches", "searches_completed", "searches_cancelled", "fast_batches", "fast_frames", "max_fast_batch", "invalid_frames", "memory_batches", "memory_frames")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEARCH_BATCHES_FIELD_NUMBER: _ClassVar[int]
    SEARCH_SLOT_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEARCH_BATCH_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    SLOT_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_SEARCHES_FIELD_NUMBER: _ClassVar[int]
    SEARCHES_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    SEARCHES_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    FAST_BATCHES_FIELD_NUMBER: _ClassVar[int]
    FAST_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_FAST_BATCH_FIELD_NUMBER: _ClassVar[int]
    INVALID_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BATCHES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FRAMES_FIELD_NUMBER: _ClassVar[int]
    model: str
    search_batches: int
    search_slot_steps: int
    max_search_batch: int
    active_slots: int
    slot_capacity: int
    queued_searches: int
    searches_completed: int
    searches_cancelled: int
    fast_batches: int
    fast_frames: int
    max_fast_batch: int
    invalid_frames: int
    memory_batches: int
    memory_frames: int
    def __init__(self, model: _Optional[str] = ..., search_batches: _Optional[int] = ..., search_slot_steps: _Optional[int] = ..., max_search_batch: _Optional[int] = ..., active_slots: _Optional[int] = ..., slot_capacity: _Optional[int] = ..., queued_searches: _Optional[int] = ..., searches_completed: _Optional[int] = ..., searches_cancelled: _Optional[int] = ..., fast_batches: _Optional[int] = ..., fast_frames: _Optional[int] = ..., max_fast_batch: _Optional[int] = ..., invalid_frames: _Optional[int] = ..., memory_batches: _Optional[int] = ..., memory_frames: _Optional[int] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("model", "frame_id", "frame", "label", "note")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    model: str
    frame_id: str
    frame: Frame
    label: OperatorLabel
    note: str
    def __init__(self, model: _Optional[str] = ..., frame_id: _Optional[str] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., label: _Optional[_Union[OperatorLabel, str]] = ..., note: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("outcome", "frame_sha256", "model_version", "good_collected", "new_version")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    FRAME_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    GOOD_COLLECTED_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    outcome: FeedbackOutcome
    frame_sha256: str
    model_version: str
    good_collected: int
    new_version: str
    def __init__(self, outcome: _Optional[_Union[FeedbackOutcome, str]] = ..., frame_sha256: _Optional[str] = ..., model_version: _Optional[str] = ..., good_collected: _Optional[int] = ..., new_version: _Optional[str] = ...) -> None: ...

class CommitLearningRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class CommitLearningResponse(_message.Message):
    __slots__ = ("model_version", "parent_version", "frames_learnt", "threshold")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAMES_LEARNT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    parent_version: str
    frames_learnt: int
    threshold: float
    def __init__(self, model_version: _Optional[str] = ..., parent_version: _Optional[str] = ..., frames_learnt: _Optional[int] = ..., threshold: _Optional[float] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("model_version", "replaced_version")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLACED_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    replaced_version: str
    def __init__(self, model_version: _Optional[str] = ..., replaced_version: _Optional[str] = ...) -> None: ...
