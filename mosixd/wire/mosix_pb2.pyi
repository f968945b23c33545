from google.protobuf.internal import containers as _containers
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
    __slots__ = ("node_id", "address", "generation", "age", "blocked", "leaving", "load")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    generation: int
    age: float
    blocked: bool
    leaving: bool
    load: LoadVector
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., generation: _Optional[int] = ..., age: _Optional[float] = ..., blocked: _Optional[bool] = ..., leaving: _Optional[bool] = ..., load: _Optional[_Union[LoadVector, _Mapping]] = ...) -> None: ...

class GossipMessage(_message.Message):
    __slots__ = ("sender_id", "sender_address", "entries")
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    sender_id: str
    sender_address: str
    entries: _containers.RepeatedCompositeFieldContainer[GossipEntry]
    def __init__(self, sender_id: _Optional[str] = ..., sender_address: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[GossipEntry, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("node_id", "nodes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, node_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class SetBlockedRequest(_message.Message):
    __slots__ = ("blocked",)
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    blocked: bool
    def __init__(self, blocked: _Optional[bool] = ...) -> None: ...
