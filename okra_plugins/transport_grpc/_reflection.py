"""gRPC server reflection (v1 and v1alpha) over whatever the runtime has deployed now.

grpcio-reflection's servicer takes its service names once, at creation; OKRA's services
come and go while the server runs, so this servicer asks the runtime on every request.
Each package has its own descriptor pool, and two packages may carry different files with
the same name (two versions of `common/v1/types.proto`): a file is always resolved inside
one package, together with its dependencies, and within one reflection stream the
packages that already answered are asked first, so a client never gets a mix of two
packages' files.

v1 and v1alpha have the same messages under different package names, hence the same wire
format: one implementation, on grpcio-reflection's v1alpha message classes, serves both.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

log = logging.getLogger("okra.transport.grpc")

SERVICE_V1 = "grpc.reflection.v1.ServerReflection"
SERVICE_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
SERVICE_NAMES = (SERVICE_V1, SERVICE_V1ALPHA)
METHOD = "ServerReflectionInfo"

_Request = reflection_pb2.ServerReflectionRequest
_Response = reflection_pb2.ServerReflectionResponse


class FileSet:
    """The files of one descriptor set, by name, serialized as the set carried them,
    with a pool to find which file defines a symbol."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto], pool=None):
        self.files: dict[str, bytes] = {}
        self.dependencies: dict[str, tuple[str, ...]] = {}
        for file in files:
            self.files[file.name] = file.SerializeToString()
            self.dependencies[file.name] = tuple(file.dependency)
        if pool is None:
            pool = descriptor_pool.DescriptorPool()
            for name in self._ordered(self.files):
                pool.AddSerializedFile(self.files[name])
        self.pool = pool

    @classmethod
    def from_descriptor_set(cls, data: bytes, pool=None) -> FileSet:
        return cls(descriptor_pb2.FileDescriptorSet.FromString(data).file, pool)

    def file_of_symbol(self, symbol: str) -> str | None:
        try:
            return self.pool.FindFileContainingSymbol(symbol).name
        except KeyError:
            pass
        # Methods are symbols for reflection clients (`grpcurl describe pkg.Svc.Method`),
        # but not for every DescriptorPool implementation.
        parent, _, child = symbol.rpartition(".")
        try:
            service = self.pool.FindServiceByName(parent)
        except KeyError:
            return None
        return service.file.name if child in service.methods_by_name else None

    def with_dependencies(self, name: str) -> list[bytes] | None:
        """`name` first, then every file it depends on, transitively, each once."""
        if name not in self.files:
            return None
        ordered: list[str] = []
        seen = {name}
        stack = [name]
        while stack:
            current = stack.pop()
            ordered.append(current)
            for dep in self.dependencies.get(current, ()):
                if dep not in seen and dep in self.files:
                    seen.add(dep)
                    stack.append(dep)
        return [self.files[n] for n in ordered]

    def extension_numbers(self, type_name: str) -> tuple[str, list[int]] | None:
        try:
            message = self.pool.FindMessageTypeByName(type_name)
        except KeyError:
            return None
        return message.full_name, sorted(ext.number for ext in self.pool.FindAllExtensions(message))

    def file_of_extension(self, type_name: str, number: int) -> str | None:
        try:
            message = self.pool.FindMessageTypeByName(type_name)
            return self.pool.FindExtensionByNumber(message, number).file.name
        except KeyError:
            return None

    def _ordered(self, names: Iterable[str]) -> list[str]:
        """Dependencies before dependants, as a pool needs them added."""
        ordered: list[str] = []
        done: set[str] = set()

        def visit(name: str) -> None:
            if name in done:
                return
            done.add(name)
            for dep in self.dependencies.get(name, ()):
                if dep in self.files:
                    visit(dep)
            ordered.append(name)

        for name in names:
            visit(name)
        return ordered


def builtin_files() -> FileSet:
    """The files of the services every OKRA gRPC server has: health and reflection."""
    health = descriptor_pb2.FileDescriptorProto.FromString(health_pb2.DESCRIPTOR.serialized_pb)
    v1alpha = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    return FileSet([health, v1alpha, _v1_from_v1alpha(v1alpha)])


def _v1_from_v1alpha(v1alpha: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, which grpcio-reflection does not ship: the same
    messages and service as v1alpha under the v1 package."""
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(v1alpha)
    v1.name = "grpc/reflection/v1/reflection.proto"
    v1.package = "grpc.reflection.v1"
    v1.ClearField("options")
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."

    def rename(messages) -> None:
        for message in messages:
            for field in message.field:
                if field.type_name.startswith(old):
                    field.type_name = new + field.type_name[len(old) :]
            rename(message.nested_type)

    rename(v1.message_type)
    for service in v1.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    return v1


class DynamicReflection:
    """The ServerReflectionInfo stream. `sources()` returns the file sets of the deployed
    packages; `service_names()` the services to list; both are called per request."""

    def __init__(
        self,
        service_names: Callable[[], list[str]],
        sources: Callable[[], list[FileSet]],
    ):
        self._service_names = service_names
        self._sources = sources
        self._builtin = builtin_files()

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        handler = grpc.stream_stream_rpc_method_handler(
            self.info,
            request_deserializer=_Request.FromString,
            response_serializer=_Response.SerializeToString,
        )
        return [grpc.method_handlers_generic_handler(name, {METHOD: handler}) for name in SERVICE_NAMES]

    async def info(self, requests: AsyncIterator[_Request], context: Any) -> AsyncIterator[_Response]:
        preferred: list[FileSet] = []
        async for request in requests:
            try:
                response = self.answer(request, preferred)
            except Exception:  # a reflection bug must not take the stream down silently
                log.exception("reflection request failed: %s", request)
                response = _error(request, grpc.StatusCode.INTERNAL, "reflection failed; see the server log")
            yield response

    def answer(self, request: _Request, preferred: list[FileSet]) -> _Response:
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            names = sorted({*self._service_names(), *SERVICE_NAMES, "grpc.health.v1.Health"})
            return _Response(
                original_request=request,
                list_services_response=reflection_pb2.ListServiceResponse(
                    service=[reflection_pb2.ServiceResponse(name=n) for n in names]
                ),
            )
        if kind == "file_by_filename":
            wanted = request.file_by_filename
            return self._files(request, preferred, lambda fs: wanted if wanted in fs.files else None,
                               f"no file named {wanted!r}")
        if kind == "file_containing_symbol":
            symbol = request.file_containing_symbol
            return self._files(request, preferred, lambda fs: fs.file_of_symbol(symbol),
                               f"no symbol named {symbol!r}")
        if kind == "file_containing_extension":
            ext = request.file_containing_extension
            return self._files(
                request, preferred,
                lambda fs: fs.file_of_extension(ext.containing_type, ext.extension_number),
                f"no extension {ext.extension_number} of {ext.containing_type!r}",
            )
        if kind == "all_extension_numbers_of_type":
            type_name = request.all_extension_numbers_of_type
            for fileset in self._search_order(preferred):
                found = fileset.extension_numbers(type_name)
                if found is not None:
                    base, numbers = found
                    return _Response(
                        original_request=request,
                        all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                            base_type_name=base, extension_number=numbers
                        ),
                    )
            return _error(request, grpc.StatusCode.NOT_FOUND, f"no message type named {type_name!r}")
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "empty or unknown reflection request")

    def _files(self, request, preferred, find, missing: str) -> _Response:
        for fileset in self._search_order(preferred):
            name = find(fileset)
            if name is None:
                continue
            if fileset not in preferred:
                preferred.insert(0, fileset)
            return _Response(
                original_request=request,
                file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                    file_descriptor_proto=fileset.with_dependencies(name)
                ),
            )
        return _error(request, grpc.StatusCode.NOT_FOUND, missing)

    def _search_order(self, preferred: list[FileSet]) -> list[FileSet]:
        current = self._sources()
        live = [fs for fs in preferred if fs in current]
        return live + [fs for fs in current if fs not in live] + [self._builtin]


def _error(request: _Request, code: grpc.StatusCode, message: str) -> _Response:
    return _Response(
        original_request=request,
        error_response=reflection_pb2.ErrorResponse(error_code=code.value[0], error_message=message),
    )
