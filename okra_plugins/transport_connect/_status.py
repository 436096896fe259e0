"""OKRA status codes and Connect codes are the same codes under other names."""

from __future__ import annotations

from connectrpc.code import Code

from okra_core.status import StatusCode

#: OKRA (gRPC) code -> Connect code; Connect spells CANCELLED "canceled".
TO_CONNECT: dict[StatusCode, Code] = {
    code: Code.CANCELED if code is StatusCode.CANCELLED else Code[code.name]
    for code in StatusCode
    if code is not StatusCode.OK
}
