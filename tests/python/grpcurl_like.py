"""A reflection-only gRPC client: what `grpcurl` does, in Python.

It knows no `.proto` file. It asks the server's reflection service for the descriptors of a
service, builds message classes from them at run time, parses the request from JSON, and prints
the reply as JSON — so a test that passes with it shows that `grpcurl` works against the server.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


class ReflectionClient:
    """Calls any RPC of a server by name, with JSON in and out, using only server reflection."""

    def __init__(self, target: str, api_key: str | None = None, v1: bool = False) -> None:
        self.channel = grpc.insecure_channel(target)
        self.api_key = api_key
        self.pool = descriptor_pool.DescriptorPool()
        self.files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        # v1 and v1alpha messages are identical on the wire; only the method path differs.
        path = REFLECTION_V1 if v1 else "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        self._reflect = self.channel.stream_stream(
            path,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )

    def close(self) -> None:
        self.channel.close()

    def _ask(self, **kwargs: Any) -> reflection_pb2.ServerReflectionResponse:
        replies = list(self._reflect(iter([reflection_pb2.ServerReflectionRequest(**kwargs)]), timeout=10))
        assert len(replies) == 1, replies
        reply = replies[0]
        if reply.HasField("error_response"):
            raise LookupError(reply.error_response.error_message)
        return reply

    def list_services(self) -> list[str]:
        """`grpcurl list`."""
        reply = self._ask(list_services="")
        return sorted(s.name for s in reply.list_services_response.service)

    def load(self, symbol: str) -> None:
        """Fetches the file defining `symbol` and its dependencies into the pool."""
        reply = self._ask(file_containing_symbol=symbol)
        pending = []
        for raw in reply.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            if fd.name not in self.files:
                pending.append(fd)
        # Add files once their dependencies are in, whatever order the server sent them in.
        while pending:
            progress = False
            for fd in list(pending):
                if all(dep in self.files for dep in fd.dependency):
                    self.pool.Add(fd)
                    self.files[fd.name] = fd
                    pending.remove(fd)
                    progress = True
            if not progress:
                missing = {d for fd in pending for d in fd.dependency if d not in self.files}
                for dep in missing:
                    self._load_file(dep)

    def _load_file(self, name: str) -> None:
        reply = self._ask(file_by_filename=name)
        for raw in reply.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            if fd.name not in self.files and all(dep in self.files for dep in fd.dependency):
                self.pool.Add(fd)
                self.files[fd.name] = fd

    def call(self, method: str, body: dict | str | None = None, api_key: str | None = None,
             metadata: list[tuple[str, str]] | None = None) -> dict:
        """`grpcurl -d '<json>' <target> <service>/<method>`: returns the reply as JSON (a dict)."""
        service, name = method.rsplit("/", 1)
        try:
            sd = self.pool.FindServiceByName(service)
        except KeyError:
            self.load(service)
            sd = self.pool.FindServiceByName(service)
        md = sd.methods_by_name[name]
        req_cls = message_factory.GetMessageClass(md.input_type)
        resp_cls = message_factory.GetMessageClass(md.output_type)
        text = body if isinstance(body, str) else json.dumps(body or {})
        request = json_format.Parse(text, req_cls())
        rpc = self.channel.unary_unary(
            f"/{service}/{name}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        key = api_key or self.api_key
        md_list = list(metadata or [])
        if key:
            md_list.append(("authorization", f"Bearer {key}"))
        reply, call = rpc.with_call(request, metadata=md_list, timeout=30)
        # What `grpcurl -v` prints as response headers.
        self.last_headers = dict(call.initial_metadata())
        return json_format.MessageToDict(reply)

    def leading_comment(self, file_name: str, contains: str) -> bool:
        """Whether the file's source info carries a comment containing `contains` (what
        `grpcurl describe` prints)."""
        fd = self.files[file_name]
        return any(contains in loc.leading_comments for loc in fd.source_code_info.location)
