from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Header(_message.Message):
    __slots__ = ("kind", "job_id", "task_id", "size", "meta_json", "inline_data", "inline_xxh3_128")
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    INLINE_DATA_FIELD_NUMBER: _ClassVar[int]
    INLINE_XXH3_128_FIELD_NUMBER: _ClassVar[int]
    kind: str
    job_id: str
    task_id: str
    size: int
    meta_json: str
    inline_data: bytes
    inline_xxh3_128: str
    def __init__(self, kind: _Optional[str] = ..., job_id: _Optional[str] = ..., task_id: _Optional[str] = ..., size: _Optional[int] = ..., meta_json: _Optional[str] = ..., inline_data: _Optional[bytes] = ..., inline_xxh3_128: _Optional[str] = ...) -> None: ...

class Trailer(_message.Message):
    __slots__ = ("xxh3_128",)
    XXH3_128_FIELD_NUMBER: _ClassVar[int]
    xxh3_128: str
    def __init__(self, xxh3_128: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("header", "data", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: Header
    data: bytes
    trailer: Trailer
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., data: _Optional[bytes] = ..., trailer: _Optional[_Union[Trailer, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("site", "shoal_version", "resources_json", "running_jobs")
    SITE_FIELD_NUMBER: _ClassVar[int]
    SHOAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_JSON_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    site: str
    shoal_version: str
    resources_json: str
    running_jobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, site: _Optional[str] = ..., shoal_version: _Optional[str] = ..., resources_json: _Optional[str] = ..., running_jobs: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("session_id", "running_jobs", "policy_json")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    running_jobs: _containers.RepeatedScalarFieldContainer[str]
    policy_json: str
    def __init__(self, session_id: _Optional[str] = ..., running_jobs: _Optional[_Iterable[str]] = ..., policy_json: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("session_id", "job_id", "state", "detail")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    job_id: str
    state: str
    detail: str
    def __init__(self, session_id: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ServerEvent(_message.Message):
    __slots__ = ("welcome", "start_job", "abort_job", "shutdown", "forget_job")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    START_JOB_FIELD_NUMBER: _ClassVar[int]
    ABORT_JOB_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    FORGET_JOB_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    start_job: StartJob
    abort_job: AbortJob
    shutdown: Shutdown
    forget_job: ForgetJob
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., start_job: _Optional[_Union[StartJob, _Mapping]] = ..., abort_job: _Optional[_Union[AbortJob, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ..., forget_job: _Optional[_Union[ForgetJob, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "server", "heartbeat_interval_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    server: str
    heartbeat_interval_s: float
    def __init__(self, session_id: _Optional[str] = ..., server: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class StartJob(_message.Message):
    __slots__ = ("job_id", "name", "package_size", "package_sha256")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    package_size: int
    package_sha256: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., package_size: _Optional[int] = ..., package_sha256: _Optional[str] = ...) -> None: ...

class AbortJob(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ForgetJob(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason", "site_should_exit", "restart")
    REASON_FIELD_NUMBER: _ClassVar[int]
    SITE_SHOULD_EXIT_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    reason: str
    site_should_exit: bool
    restart: bool
    def __init__(self, reason: _Optional[str] = ..., site_should_exit: _Optional[bool] = ..., restart: _Optional[bool] = ...) -> None: ...

class FetchJobRequest(_message.Message):
    __slots__ = ("job_id", "worker_public_key")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_public_key: bytes
    def __init__(self, job_id: _Optional[str] = ..., worker_public_key: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("ok", "message", "meta_json")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    meta_json: str
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ..., meta_json: _Optional[str] = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("command", "args_json")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    command: str
    args_json: str
    def __init__(self, command: _Optional[str] = ..., args_json: _Optional[str] = ...) -> None: ...

class AdminReply(_message.Message):
    __slots__ = ("ok", "result_json")
    OK_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    result_json: str
    def __init__(self, ok: _Optional[bool] = ..., result_json: _Optional[str] = ...) -> None: ...
