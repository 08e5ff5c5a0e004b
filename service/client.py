"""A Python client for a running realmqa service: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on httpx.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as qa:
        a = qa.answer("Which NFL team represented the AFC at Super Bowl 50?")
        print(a.answer, a.block.title, a.block.text[a.start_char:a.end_char])

Results are the server's own response models (:mod:`service.schemas`), so a result equals what the route
answered. Any error response (the one shape ``{"error": {"type", "message", "param"}}``) is raised as
:class:`APIError`. A 429 (queue full) is retried after its ``Retry-After`` (each wait at most
``max_retry_wait_s``, at most ``max_retries`` times; without the header, exponential backoff from 0.5 s)
through ``httpx-retries``; the last 429 is then raised. Nothing else is retried: a timed-out or refused
connection raises httpx's own ``httpx.TimeoutException`` / ``httpx.TransportError``.

Importing this module imports neither torch, faiss, numpy nor FastAPI (``tests/service/test_client.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx
from httpx_retries import Retry, RetryTransport
from pydantic import BaseModel

from service.schemas import AnswerResponse, IndexesResponse, ModelsResponse, RetrieveResponse

__all__ = ["DEFAULT_URL", "APIError", "AsyncClient", "Client"]

DEFAULT_URL = "http://127.0.0.1:8000"
R = TypeVar("R", bound=BaseModel)


class APIError(Exception):
    """An error response of the service.

    Attributes:
        status: HTTP status (422 invalid input, 413 too long, 404 unknown model, 429 queue full, 503 not ready,
            504 deadline passed, ...).
        type: the error shape's ``type`` (``invalid_request``, ``overloaded``, ...).
        message: the error shape's ``message``.
        param: the request field at fault, or None.
        request_id: the response's ``X-Request-ID`` (the server logs it), or None.
    """

    def __init__(self, status: int, type: str, message: str, param: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(f"{status} {type}: {message}" + (f" (param {param})" if param else ""))
        self.status, self.type, self.message, self.param, self.request_id = status, type, message, param, request_id

    @classmethod
    def from_response(cls, r: httpx.Response) -> APIError:
        """The error of a non-2xx response; a body not in the error shape (a proxy's page) gives type ``http_error``
        and the start of the body as the message."""
        rid = r.headers.get("x-request-id")
        try:
            e = r.json()["error"]
            return cls(r.status_code, str(e["type"]), str(e["message"]), e.get("param"), rid)
        except (ValueError, KeyError, TypeError):
            return cls(r.status_code, "http_error", r.text[:200] or r.reason_phrase, None, rid)


@dataclass(frozen=True)
class _Call(Generic[R]):
    """One route call: method, path, JSON body and the response model to validate the answer with."""

    method: str
    path: str
    result: type[R]
    body: dict[str, Any] | None = field(default=None)

    def parse(self, r: httpx.Response) -> R:
        if r.is_error:
            raise APIError.from_response(r)
        return self.result.model_validate_json(r.content)


def _drop_none(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _answer(question: str, model: str | None, reader_beam_size: int | None,
            timeout_ms: float | None) -> _Call[AnswerResponse]:
    return _Call("POST", "/answer", AnswerResponse, _drop_none(
        question=question, model=model, reader_beam_size=reader_beam_size, timeout_ms=timeout_ms))


def _retrieve(query: str, k: int | None, model: str | None, timeout_ms: float | None) -> _Call[RetrieveResponse]:
    return _Call("POST", "/retrieve", RetrieveResponse, _drop_none(query=query, k=k, model=model,
                                                                   timeout_ms=timeout_ms))


_MODELS = _Call("GET", "/v1/models", ModelsResponse)
_INDEXES = _Call("GET", "/v1/indexes", IndexesResponse)


def _probe(r: httpx.Response) -> bool:
    """``/healthz`` or ``/readyz``: True on 200, False on 503; any other status raises :class:`APIError`."""
    if r.status_code == 503:
        return False
    if r.is_error:
        raise APIError.from_response(r)
    return True


def _retry(max_retries: int, max_retry_wait_s: float) -> Retry:
    """429 only, on every method (a 429 means the request was not queued, so sending it again is safe)."""
    return Retry(total=max_retries, allowed_methods=["GET", "POST"], status_forcelist=[429], retry_on_exceptions=(),
                 respect_retry_after_header=True, max_backoff_wait=max_retry_wait_s, backoff_factor=0.5)


class _Options:
    """What both clients take: base URL, timeouts (s), the 429 retry bound and extra headers."""

    def __init__(self, url: str, connect_timeout_s: float, read_timeout_s: float, max_retries: int,
                 max_retry_wait_s: float, headers: dict[str, str] | None) -> None:
        self.url = url.rstrip("/")
        self.timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self.retry = _retry(max_retries, max_retry_wait_s)
        self.headers = headers or {}


class Client:
    """Blocking client. Use as a context manager, or call :meth:`close`.

    Args:
        url: the service's base URL.
        connect_timeout_s: seconds to wait for a connection.
        read_timeout_s: seconds to wait for each read of a response (an answer on a cold CPU server takes ~1 s).
        max_retries: how often a 429 is sent again before :class:`APIError` (status 429) is raised; 0 = never.
        max_retry_wait_s: the longest single wait before a retry, whatever ``Retry-After`` says.
        headers: sent with every request (e.g. ``X-Request-ID``).
    """

    def __init__(self, url: str = DEFAULT_URL, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 max_retries: int = 3, max_retry_wait_s: float = 30.0, headers: dict[str, str] | None = None) -> None:
        o = _Options(url, connect_timeout_s, read_timeout_s, max_retries, max_retry_wait_s, headers)
        self._http = httpx.Client(base_url=o.url, timeout=o.timeout, headers=o.headers,
                                  transport=RetryTransport(httpx.HTTPTransport(), retry=o.retry))

    def _send(self, call: _Call[R]) -> R:
        return call.parse(self._http.request(call.method, call.path, json=call.body))

    def answer(self, question: str, *, model: str | None = None, reader_beam_size: int | None = None,
               timeout_ms: float | None = None) -> AnswerResponse:
        """``POST /answer``: the answer, its block and the other candidates (best span per block read).

        Raises:
            APIError: any error response, e.g. 422 a blank question, 413 a too-long one, 504 past ``timeout_ms``.
        """
        return self._send(_answer(question, model, reader_beam_size, timeout_ms))

    def retrieve(self, query: str, *, k: int | None = None, model: str | None = None,
                 timeout_ms: float | None = None) -> RetrieveResponse:
        """``POST /retrieve``: the top-``k`` blocks by relevance score, best first. Raises :class:`APIError`."""
        return self._send(_retrieve(query, k, model, timeout_ms))

    def models(self) -> ModelsResponse:
        """``GET /v1/models``: every model, its versions and their state."""
        return self._send(_MODELS)

    def indexes(self) -> IndexesResponse:
        """``GET /v1/indexes``: every index version and the model versions serving it."""
        return self._send(_INDEXES)

    def health(self) -> bool:
        """``GET /healthz``: whether the process is alive (False on 503)."""
        return _probe(self._http.get("/healthz"))

    def ready(self) -> bool:
        """``GET /readyz``: whether every served model answers through its index (False on 503)."""
        return _probe(self._http.get("/readyz"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same arguments, methods and results, awaited.
    Use ``async with``, or await :meth:`aclose`."""

    def __init__(self, url: str = DEFAULT_URL, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 max_retries: int = 3, max_retry_wait_s: float = 30.0, headers: dict[str, str] | None = None) -> None:
        o = _Options(url, connect_timeout_s, read_timeout_s, max_retries, max_retry_wait_s, headers)
        self._http = httpx.AsyncClient(base_url=o.url, timeout=o.timeout, headers=o.headers,
                                       transport=RetryTransport(httpx.AsyncHTTPTransport(), retry=o.retry))

    async def _send(self, call: _Call[R]) -> R:
        return call.parse(await self._http.request(call.method, call.path, json=call.body))

    async def answer(self, question: str, *, model: str | None = None, reader_beam_size: int | None = None,
                     timeout_ms: float | None = None) -> AnswerResponse:
        """See :meth:`Client.answer`."""
        return await self._send(_answer(question, model, reader_beam_size, timeout_ms))

    async def retrieve(self, query: str, *, k: int | None = None, model: str | None = None,
                       timeout_ms: float | None = None) -> RetrieveResponse:
        """See :meth:`Client.retrieve`."""
        return await self._send(_retrieve(query, k, model, timeout_ms))

    async def models(self) -> ModelsResponse:
        return await self._send(_MODELS)

    async def indexes(self) -> IndexesResponse:
        return await self._send(_INDEXES)

    async def health(self) -> bool:
        return _probe(await self._http.get("/healthz"))

    async def ready(self) -> bool:
        return _probe(await self._http.get("/readyz"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
