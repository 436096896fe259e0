"""OKRA status codes and grpc.StatusCode are the same codes: map them by name."""

from __future__ import annotations

import grpc

from okra_core.status import StatusCode

TO_GRPC: dict[StatusCode, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in StatusCode}
FROM_GRPC: dict[grpc.StatusCode, StatusCode] = {grpc_code: code for code, grpc_code in TO_GRPC.items()}
