"""LeRobot's `transport` protocol, declared here (no lerobot import): the messages and the service name of
`lerobot/transport/services.proto` (identical 0.4.4 → 0.6.1) with the same field numbers, so the bytes on
the wire match the stock client's. Built into a private descriptor pool so it never clashes with lerobot's
own generated module when both live in one process (tests run the real client in-process)."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "transport.AsyncInference"
PACKAGE = "transport"

# TransferState enum values (services.proto)
TRANSFER_UNKNOWN, TRANSFER_BEGIN, TRANSFER_MIDDLE, TRANSFER_END = 0, 1, 2, 3

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="smolvla_cls_edge/transport.proto", package=PACKAGE, syntax="proto3")
    enum = fd.enum_type.add(name="TransferState")
    for i, name in enumerate(("TRANSFER_UNKNOWN", "TRANSFER_BEGIN", "TRANSFER_MIDDLE", "TRANSFER_END")):
        enum.value.add(name=name, number=i)

    def message(name: str, fields: list[tuple[str, int, int, str | None]]) -> None:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=_F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = type_name

    state = ("transfer_state", 1, _F.TYPE_ENUM, f".{PACKAGE}.TransferState")
    message("Observation", [state, ("data", 2, _F.TYPE_BYTES, None)])
    message("Actions", [("data", 1, _F.TYPE_BYTES, None)])
    message("PolicySetup", [("data", 1, _F.TYPE_BYTES, None)])
    message("Empty", [])
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def _cls(name: str) -> type:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


Observation = _cls("Observation")
Actions = _cls("Actions")
PolicySetup = _cls("PolicySetup")
Empty = _cls("Empty")
