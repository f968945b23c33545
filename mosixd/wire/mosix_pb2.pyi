from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadVector(_message.Message):
    __slots__ = ("load", "cpus", "speed", "mem_total", "mem_free", "local_tasks", "guest_tasks", "python")
    LOAD_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEM_FREE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_TASKS_FIELD_NUMBER: _ClassVar[int]
    GUEST_TASKS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    load: float
    cpus: int
    speed: float
    mem_total: int
    mem_free: int
    local_tasks: int
    guest_tasks: int
    python: str
    def __init__(self, load: _Optional[float] = ..., cpus: _Optional[int] = ..., speed: _Optional[float] = ..., mem_total: _Optional[int] = ..., mem_free: _Optional[int] = ..., local_tasks: _Optional[int] = ..., guest_tasks: _Optional[int] = ..., python: _Optional[str] = ...) -> None: ...

class GossipEntry(_message.Message):
    __slots__ = ("node_id", "address", "generation", "age", "blocked", "leaving", "load", "incarnation")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    generation: int
    age: float
    blocked: bool
    leaving: bool
    load: LoadVector
    incarnation: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., generation: _Optional[int] = ..., age: _Optional[float] = ..., blocked: _Optional[bool] = ..., leaving: _Optional[bool] = ..., load: _Optional[_Union[LoadVector, _Mapping]] = ..., incarnation: _Optional[int] = ...) -> None: ...

class MemberRumor(_message.Message):
    __slots__ = ("node_id", "address", "generation", "incarnation", "status")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ALIVE: _ClassVar[MemberRumor.Status]
        SUSPECT: _ClassVar[MemberRumor.Status]
        DEAD: _ClassVar[MemberRumor.Status]
        LEFT: _ClassVar[MemberRumor.Status]
    ALIVE: MemberRumor.Status
    SUSPECT: MemberRumor.Status
    DEAD: MemberRumor.Status
    LEFT: MemberRumor.Status
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    generation: int
    incarnation: int
    status: MemberRumor.Status
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., generation: _Optional[int] = ..., incarnation: _Optional[int] = ..., status: _Optional[_Union[MemberRumor.Status, str]] = ...) -> None: ...

class GossipMessage(_message.Message):
    __slots__ = ("sender_id", "sender_address", "entries", "rumors", "rumors_only")
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    RUMORS_FIELD_NUMBER: _ClassVar[int]
    RUMORS_ONLY_FIELD_NUMBER: _ClassVar[int]
    sender_id: str
    sender_address: str
    entries: _containers.RepeatedCompositeFieldContainer[GossipEntry]
    rumors: _containers.RepeatedCompositeFieldContainer[MemberRumor]
    rumors_only: bool
    def __init__(self, sender_id: _Optional[str] = ..., sender_address: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[GossipEntry, _Mapping]]] = ..., rumors: _Optional[_Iterable[_Union[MemberRumor, _Mapping]]] = ..., rumors_only: _Optional[bool] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("target", "message")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    target: str
    message: GossipMessage
    def __init__(self, target: _Optional[str] = ..., message: _Optional[_Union[GossipMessage, _Mapping]] = ...) -> None: ...

class ProbeReply(_message.Message):
    __slots__ = ("reached", "reply", "error")
    REACHED_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reached: bool
    reply: GossipMessage
    error: str
    def __init__(self, reached: _Optional[bool] = ..., reply: _Optional[_Union[GossipMessage, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("id", "address", "state", "load", "age", "self", "generation")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    SELF_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    state: str
    load: LoadVector
    age: float
    self: bool
    generation: int
    def __init__(self_, id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., load: _Optional[_Union[LoadVector, _Mapping]] = ..., age: _Optional[float] = ..., self: _Optional[bool] = ..., generation: _Optional[int] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStatusReply(_message.Message):
    __slots__ = ("node_id", "nodes", "tables")
    class TablesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    tables: _containers.ScalarMap[str, int]
    def __init__(self, node_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., tables: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SetBlockedRequest(_message.Message):
    __slots__ = ("blocked",)
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    blocked: bool
    def __init__(self, blocked: _Optional[bool] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("task_id", "home", "argv", "executable", "python", "python_options", "python_args", "env", "cwd", "umask", "user", "uid", "gid", "memory_mb", "stdin_tty", "stdout_tty", "stderr_tty", "job_name", "started", "python_version", "restore", "epoch", "locked", "checkpoint_every", "streams_to", "streams_token", "incoming_bytes", "stdout_origin", "stderr_origin", "stdin_origin")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    PYTHON_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    UMASK_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    STDIN_TTY_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TTY_FIELD_NUMBER: _ClassVar[int]
    STDERR_TTY_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    STREAMS_TO_FIELD_NUMBER: _ClassVar[int]
    STREAMS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCOMING_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDOUT_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    STDERR_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    STDIN_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    home: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    executable: str
    python: bool
    python_options: _containers.RepeatedScalarFieldContainer[str]
    python_args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    umask: int
    user: str
    uid: int
    gid: int
    memory_mb: int
    stdin_tty: bool
    stdout_tty: bool
    stderr_tty: bool
    job_name: str
    started: float
    python_version: str
    restore: bool
    epoch: int
    locked: bool
    checkpoint_every: float
    streams_to: str
    streams_token: bytes
    incoming_bytes: int
    stdout_origin: int
    stderr_origin: int
    stdin_origin: int
    def __init__(self, task_id: _Optional[str] = ..., home: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., executable: _Optional[str] = ..., python: _Optional[bool] = ..., python_options: _Optional[_Iterable[str]] = ..., python_args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., umask: _Optional[int] = ..., user: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., memory_mb: _Optional[int] = ..., stdin_tty: _Optional[bool] = ..., stdout_tty: _Optional[bool] = ..., stderr_tty: _Optional[bool] = ..., job_name: _Optional[str] = ..., started: _Optional[float] = ..., python_version: _Optional[str] = ..., restore: _Optional[bool] = ..., epoch: _Optional[int] = ..., locked: _Optional[bool] = ..., checkpoint_every: _Optional[float] = ..., streams_to: _Optional[str] = ..., streams_token: _Optional[bytes] = ..., incoming_bytes: _Optional[int] = ..., stdout_origin: _Optional[int] = ..., stderr_origin: _Optional[int] = ..., stdin_origin: _Optional[int] = ...) -> None: ...

class HomeMessage(_message.Message):
    __slots__ = ("start", "stdin", "stdin_eof", "signal", "reserve", "freeze", "verdict", "reattach", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDIN_EOF_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REATTACH_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: TaskSpec
    stdin: bytes
    stdin_eof: bool
    signal: int
    reserve: TaskSpec
    freeze: Freeze
    verdict: Verdict
    reattach: str
    end: bool
    def __init__(self, start: _Optional[_Union[TaskSpec, _Mapping]] = ..., stdin: _Optional[bytes] = ..., stdin_eof: _Optional[bool] = ..., signal: _Optional[int] = ..., reserve: _Optional[_Union[TaskSpec, _Mapping]] = ..., freeze: _Optional[_Union[Freeze, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., reattach: _Optional[str] = ..., end: _Optional[bool] = ...) -> None: ...

class Freeze(_message.Message):
    __slots__ = ("id", "send_to", "token", "precopy")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEND_TO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PRECOPY_FIELD_NUMBER: _ClassVar[int]
    id: int
    send_to: str
    token: bytes
    precopy: bool
    def __init__(self, id: _Optional[int] = ..., send_to: _Optional[str] = ..., token: _Optional[bytes] = ..., precopy: _Optional[bool] = ...) -> None: ...

class Handover(_message.Message):
    __slots__ = ("size", "seconds", "precopy_bytes", "precopy_rounds", "stdin_offset", "stdout_offset", "stderr_offset")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    PRECOPY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRECOPY_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    STDIN_OFFSET_FIELD_NUMBER: _ClassVar[int]
    STDOUT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    STDERR_OFFSET_FIELD_NUMBER: _ClassVar[int]
    size: int
    seconds: float
    precopy_bytes: int
    precopy_rounds: int
    stdin_offset: int
    stdout_offset: int
    stderr_offset: int
    def __init__(self, size: _Optional[int] = ..., seconds: _Optional[float] = ..., precopy_bytes: _Optional[int] = ..., precopy_rounds: _Optional[int] = ..., stdin_offset: _Optional[int] = ..., stdout_offset: _Optional[int] = ..., stderr_offset: _Optional[int] = ...) -> None: ...

class OutputOffsets(_message.Message):
    __slots__ = ("stdout", "stderr")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    stdout: int
    stderr: int
    def __init__(self, stdout: _Optional[int] = ..., stderr: _Optional[int] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("checkpoint_to", "token")
    CHECKPOINT_TO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    checkpoint_to: str
    token: bytes
    def __init__(self, checkpoint_to: _Optional[str] = ..., token: _Optional[bytes] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("freeze", "exit")
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    freeze: int
    exit: bool
    def __init__(self, freeze: _Optional[int] = ..., exit: _Optional[bool] = ...) -> None: ...

class TaskStarted(_message.Message):
    __slots__ = ("node_id", "pid", "reattached", "stdin_offset", "epoch", "movable")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    REATTACHED_FIELD_NUMBER: _ClassVar[int]
    STDIN_OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MOVABLE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    pid: int
    reattached: bool
    stdin_offset: int
    epoch: int
    movable: bool
    def __init__(self, node_id: _Optional[str] = ..., pid: _Optional[int] = ..., reattached: _Optional[bool] = ..., stdin_offset: _Optional[int] = ..., epoch: _Optional[int] = ..., movable: _Optional[bool] = ...) -> None: ...

class TaskExit(_message.Message):
    __slots__ = ("code", "signal")
    CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    code: int
    signal: int
    def __init__(self, code: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("reason", "retry")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    reason: str
    retry: bool
    def __init__(self, reason: _Optional[str] = ..., retry: _Optional[bool] = ...) -> None: ...

class TaskUsage(_message.Message):
    __slots__ = ("cpu", "rss")
    CPU_FIELD_NUMBER: _ClassVar[int]
    RSS_FIELD_NUMBER: _ClassVar[int]
    cpu: float
    rss: int
    def __init__(self, cpu: _Optional[float] = ..., rss: _Optional[int] = ...) -> None: ...

class HostEvent(_message.Message):
    __slots__ = ("started", "exited", "refused", "usage", "stdin_ack", "reserved", "checkpoint", "frozen", "sent", "freeze_failed", "movable", "evicted", "written")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STDIN_ACK_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FAILED_FIELD_NUMBER: _ClassVar[int]
    MOVABLE_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    started: TaskStarted
    exited: TaskExit
    refused: Refusal
    usage: TaskUsage
    stdin_ack: int
    reserved: Reservation
    checkpoint: bytes
    frozen: int
    sent: Handover
    freeze_failed: str
    movable: bool
    evicted: str
    written: OutputOffsets
    def __init__(self, started: _Optional[_Union[TaskStarted, _Mapping]] = ..., exited: _Optional[_Union[TaskExit, _Mapping]] = ..., refused: _Optional[_Union[Refusal, _Mapping]] = ..., usage: _Optional[_Union[TaskUsage, _Mapping]] = ..., stdin_ack: _Optional[int] = ..., reserved: _Optional[_Union[Reservation, _Mapping]] = ..., checkpoint: _Optional[bytes] = ..., frozen: _Optional[int] = ..., sent: _Optional[_Union[Handover, _Mapping]] = ..., freeze_failed: _Optional[str] = ..., movable: _Optional[bool] = ..., evicted: _Optional[str] = ..., written: _Optional[_Union[OutputOffsets, _Mapping]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("id", "user", "home", "where", "state", "started", "cpu", "rss", "command", "pid", "queue")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    RSS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    id: str
    user: str
    home: str
    where: str
    state: str
    started: float
    cpu: float
    rss: int
    command: str
    pid: int
    queue: int
    def __init__(self, id: _Optional[str] = ..., user: _Optional[str] = ..., home: _Optional[str] = ..., where: _Optional[str] = ..., state: _Optional[str] = ..., started: _Optional[float] = ..., cpu: _Optional[float] = ..., rss: _Optional[int] = ..., command: _Optional[str] = ..., pid: _Optional[int] = ..., queue: _Optional[int] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskList(_message.Message):
    __slots__ = ("node_id", "tasks")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, node_id: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("task_id", "target", "uid")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    target: str
    uid: int
    def __init__(self, task_id: _Optional[str] = ..., target: _Optional[str] = ..., uid: _Optional[int] = ...) -> None: ...

class MigrateReply(_message.Message):
    __slots__ = ("ok", "message", "node", "freeze_seconds", "state_bytes", "transfer_seconds", "precopy_bytes", "precopy_rounds")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    FREEZE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PRECOPY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRECOPY_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    node: str
    freeze_seconds: float
    state_bytes: int
    transfer_seconds: float
    precopy_bytes: int
    precopy_rounds: int
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ..., node: _Optional[str] = ..., freeze_seconds: _Optional[float] = ..., state_bytes: _Optional[int] = ..., transfer_seconds: _Optional[float] = ..., precopy_bytes: _Optional[int] = ..., precopy_rounds: _Optional[int] = ...) -> None: ...
