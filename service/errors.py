"""Errors as values: every failure becomes one `ServiceError` with a contract error code."""

from __future__ import annotations

from service.schemas import ErrorCode


class ServiceError(Exception):
    """A failure with a contract error code and a short text that is safe to publish."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        """Seconds the API asked to wait before trying again (`retry-after[-ms]`), if it did."""

    def __repr__(self) -> str:
        return f"ServiceError({self.code.value!r}, {self.message!r}, retryable={self.retryable})"


class ThreadNotFound(ServiceError):
    """The thread/conversation does not exist on the OpenAI side."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(ErrorCode.THREAD_NOT_FOUND, f"Thread {thread_id} was not found")


class RunTimeout(ServiceError):
    """The run took longer than allowed, or its stream went quiet."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TIMEOUT, message, retryable=True)
