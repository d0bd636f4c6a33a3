"""Server reflection, v1 and v1alpha, with the contract's comments.

grpcio-reflection serves `grpc.reflection.v1alpha` only, and from the process's descriptor
pool, which keeps no source info, so `grpcurl describe` showed none of the contract's
comments. This servicer answers both versions (their messages are the same on the wire:
the v1 proto renamed the package and kept every field) and takes the contract's files from
anogan/v1/inspection.binpb, the descriptor set `make proto` writes with `--include_source_info`;
every other file (health, reflection itself) comes from the pool as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as pb

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
METHOD = "ServerReflectionInfo"


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, made from the v1alpha file the pool holds: the
    same messages under the v1 package (so that v1 clients can describe it too)."""
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    proto.ClearField("options")
    rename = {"type_name", "input_type", "output_type"}
    pending = [*proto.message_type, *proto.service]
    while pending:  # every reference to a v1alpha type, in messages, fields and methods
        item = pending.pop()
        for field, value in item.ListFields():
            if field.name in rename:
                setattr(item, field.name, value.replace(".v1alpha.", ".v1."))
            elif field.message_type is not None and field.is_repeated:
                pending.extend(value)
    return proto


def contract_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The contract and its imports, with comments (the checked-in descriptor set)."""
    data = resources.files("anogan.v1").joinpath("inspection.binpb").read_bytes()
    return list(descriptor_pb2.FileDescriptorSet.FromString(data).file)


class ReflectionServicer:
    """Answers ServerReflectionInfo for both versions. Files are looked up first among the
    contract's own (with source info) and the v1 reflection file, then in the pool."""

    def __init__(self, service_names: Iterable[str]):
        self.service_names = sorted({*service_names, V1, V1ALPHA})
        self.files = {f.name: f for f in [*contract_files(), v1_file()]}
        # Symbols of our files, resolved in a pool of their own (imports first).
        self.own = descriptor_pool.DescriptorPool()
        for proto in self.files.values():
            self.own.Add(proto)
        self.pool = descriptor_pool.Default()

    def file_proto(self, name: str) -> descriptor_pb2.FileDescriptorProto:
        if name in self.files:
            return self.files[name]
        proto = descriptor_pb2.FileDescriptorProto()
        self.pool.FindFileByName(name).CopyToProto(proto)
        return proto

    def with_dependencies(self, name: str) -> list[bytes]:
        """The file and everything it imports, each once, the file first."""
        seen: dict[str, bytes] = {}
        pending = [name]
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            proto = self.file_proto(current)
            seen[current] = proto.SerializeToString()
            pending.extend(proto.dependency)
        return list(seen.values())

    def find(self, name: str, *lookups):
        """The first lookup(pool, name) that finds it, our files' pool before the default."""
        for pool in (self.own, self.pool):
            for lookup in lookups:
                try:
                    return lookup(pool, name)
                except KeyError:
                    continue
        raise KeyError(name)

    def file_of_symbol(self, symbol: str) -> str:
        """The file declaring a message, field, enum, value, service or method (the pools
        index no methods: those are found by name)."""
        return self.find(
            symbol, lambda pool, s: pool.FindFileContainingSymbol(s).name,
            lambda pool, s: pool.FindMethodByName(s).containing_service.file.name)

    def message(self, name: str):
        return self.find(name, lambda pool, n: pool.FindMessageTypeByName(n))

    def answer(self, request: pb.ServerReflectionRequest) -> pb.ServerReflectionResponse:
        response = pb.ServerReflectionResponse(original_request=request)
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                response.list_services_response.service.extend(
                    pb.ServiceResponse(name=name) for name in self.service_names)
            elif kind == "file_by_filename":
                response.file_descriptor_response.file_descriptor_proto.extend(
                    self.with_dependencies(request.file_by_filename))
            elif kind == "file_containing_symbol":
                response.file_descriptor_response.file_descriptor_proto.extend(
                    self.with_dependencies(self.file_of_symbol(request.file_containing_symbol)))
            elif kind == "all_extension_numbers_of_type":  # proto3: none, of a known type
                response.all_extension_numbers_response.base_type_name = self.message(
                    request.all_extension_numbers_of_type).full_name
            elif kind == "file_containing_extension":
                raise KeyError(kind)  # the contract declares no extensions
            else:
                return self.error(response, grpc.StatusCode.INVALID_ARGUMENT,
                                  "no message_request set")
        except KeyError as err:
            return self.error(response, grpc.StatusCode.NOT_FOUND, f"not found: {err}")
        return response

    @staticmethod
    def error(response: pb.ServerReflectionResponse, code: grpc.StatusCode,
              message: str) -> pb.ServerReflectionResponse:
        response.error_response.error_code = code.value[0]
        response.error_response.error_message = message
        return response

    async def info(self, requests: AsyncIterator[pb.ServerReflectionRequest],
                   context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[pb.ServerReflectionResponse]:
        async for request in requests:
            yield self.answer(request)

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.stream_stream_rpc_method_handler(
            self.info, request_deserializer=pb.ServerReflectionRequest.FromString,
            response_serializer=pb.ServerReflectionResponse.SerializeToString)
        server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(name, {METHOD: handler})
            for name in (V1, V1ALPHA)))
