"""HTTP errors in OpenAI's shape, and syscall errors translated to them."""

from __future__ import annotations

from typing import Any

from llmos.abi.errors import Errno, SyscallError
from llmos.servers.openai_models import ErrorBody

STATUS_OF = {Errno.EINVAL: 400, Errno.E2BIG: 400, Errno.EPERM: 403, Errno.ENOSYS: 404, Errno.ESRCH: 404,
             Errno.ENOENT: 404, Errno.ECHILD: 409, Errno.EBUSY: 409, Errno.EAGAIN: 429, Errno.ETIMEDOUT: 504}
KIND_OF = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}

# What every authenticated route may answer besides its own 200, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "invalid request"), (401, "missing or wrong token"), (404, "no such thing"),
                         (413, "request body too large"), (429, "a limit is reached, or too many failed logins"))
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = KIND_OF.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def http_error(err: SyscallError) -> HttpError:
    param = err.details[0]["field"] if err.details else None
    code = "context_length_exceeded" if err.errno is Errno.E2BIG else err.errno.value
    return HttpError(STATUS_OF.get(err.errno, 500), err.message, code, param)
