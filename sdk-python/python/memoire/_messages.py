"""`memoire.v1` messages in Python without generated code: the descriptors come from the native
module (the same ones the server serves by reflection), the classes from protobuf's factory.
Requests are plain dicts (field names as in the .proto); replies are plain dicts too."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from . import _native

_pool = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(_native.file_descriptor_set()).file:
    _pool.Add(_file)

# RPC name -> (path, request class, reply class).
METHODS: Dict[str, Tuple[str, Any, Any]] = {}
for _service in ("memoire.v1.MemoryService", "memoire.v1.AdminService"):
    for _m in _pool.FindServiceByName(_service).methods:
        if _m.client_streaming or _m.server_streaming:
            continue
        METHODS[_m.name] = (
            f"/{_service}/{_m.name}",
            message_factory.GetMessageClass(_m.input_type),
            message_factory.GetMessageClass(_m.output_type),
        )


def encode(method: str, request: Dict[str, Any]) -> bytes:
    """The request dict as the method's encoded request message (unknown fields are errors)."""
    _, request_class, _ = METHODS[method]
    return json_format.ParseDict(request, request_class()).SerializeToString()


def decode(method: str, reply: bytes) -> Dict[str, Any]:
    """The method's encoded reply as a dict: what ``json_format.MessageToDict(message,
    preserving_proto_field_name=True, always_print_fields_with_no_presence=True)`` returns (proto
    field names, enum names, 64-bit integers as strings, every field), built by the native module
    straight from the bytes (a sixth of the CPU). Malformed bytes raise ``ValueError``."""
    _, _, reply_class = METHODS[method]
    return _native.decode_reply(reply_class.DESCRIPTOR.full_name, reply)
