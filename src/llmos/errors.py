"""One exception tree for LLMOS; the API edge turns each into one error body."""

from __future__ import annotations


def excerpt(text: str, limit: int = 64) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters: a message never
    echoes more than a short excerpt of what a client sent."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


class LLMOSError(Exception):
    """Base of every error LLMOS raises on purpose."""

    status = 500
    type = "server_error"
    code: str | None = None
    retry_after_s: int | None = None
    """Seconds a client should wait before it retries (sent as Retry-After)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(LLMOSError):
    """A setting or a URL is wrong; the message says which and how to fix it."""

    type = "invalid_request_error"
    code = "config_error"


class BadRequest(LLMOSError):
    status = 400
    type = "invalid_request_error"


class UnsupportedParameter(BadRequest):
    code = "unsupported_parameter"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class DigestMismatch(BadRequest):
    """Content does not hash to the digest it was sent or stored as; nothing was kept."""

    code = "digest_mismatch"


class Unauthorized(LLMOSError):
    """No API key where one is needed, or one that is wrong, revoked or expired."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class RateLimited(LLMOSError):
    """Over a key's or a project's rate limit or quota (a 429 with Retry-After and
    OpenAI's ``x-ratelimit-*`` headers)."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, retry_after_s: int,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.type = kind
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})


class Forbidden(LLMOSError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(BadRequest):
    status = 415
    code = "unsupported_media_type"


class LimitExceeded(BadRequest):
    """A request asks for more than a configured limit; the message names the setting."""

    code = "limit_exceeded"


class NotFound(LLMOSError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(LLMOSError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class Unavailable(LLMOSError):
    status = 503
    type = "server_error"
    code = "unavailable"


class NoReplica(Unavailable):
    """No live replica of the deployment takes requests (none started, or all drained)."""

    code = "no_replica"
    retry_after_s = 5


class Timeout(LLMOSError):
    status = 504
    type = "server_error"
    code = "timeout"


class EngineError(LLMOSError):
    status = 500
    type = "server_error"
    code = "engine_error"


class BusError(LLMOSError):
    status = 503
    type = "server_error"
    code = "bus_error"


class QueueFull(BusError):
    """A bounded queue refused a message: the caller should back off and retry."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"
    retry_after_s = 1


class RegistryError(LLMOSError):
    status = 400
    type = "invalid_request_error"
    code = "registry_error"


class ProviderError(LLMOSError):
    """A remote provider failed a request, refused it, or could not be reached."""

    status = 502
    type = "server_error"
    code = "provider_error"

    def __init__(self, message: str, *, status: int = 502, code: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s
