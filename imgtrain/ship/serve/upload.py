"""Reading a multipart upload as it streams in, with the per-file limits enforced on the way.

Starlette's `request.form()` takes in every file before the handler can look at one. Here python-multipart
calls back for each piece of each part: a file is refused the moment it passes the size limit, a part past
the file count when its headers end, and each finished file is decoded at once, so a request holds at most one
file's bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

T = TypeVar("T")


def _text(raw: bytes) -> str:
    """Header parameters as Starlette decodes them: UTF-8, else Latin-1 (which decodes any bytes)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Parts:
    """python-multipart's callbacks: keep the files of form field `field`, drop every other part's data."""

    def __init__(self, field: str, max_bytes: int, limit_mb: float, max_files: int, max_fields: int) -> None:
        self.field, self.max_bytes, self.limit_mb = field, max_bytes, limit_mb
        self.max_files, self.max_fields = max_files, max_fields
        self.files = self.fields = 0
        self.finished: list[tuple[str, bytearray]] = []  # (filename, its bytes): files ended, not yet taken
        self._header, self._value, self._disposition = b"", b"", b""
        self._name: str | None = None  # filename of the file part being read; None: a part to drop
        self._data = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.begin,
            "on_header_field": self.header,
            "on_header_value": self.value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_end,
            "on_part_data": self.data,
            "on_part_end": self.end,
        }

    def begin(self) -> None:
        self._disposition, self._name, self._data = b"", None, bytearray()

    def header(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def headers_end(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise HTTPException(400, 'bad multipart upload: a part has no "name" in its Content-Disposition')
        if b"filename" not in options:
            self.fields += 1
            if self.fields > self.max_fields:
                raise HTTPException(
                    400, f"bad multipart upload: Too many fields. Maximum number of fields is {self.max_fields}."
                )
            return
        self.files += 1
        if self.files > self.max_files:
            raise HTTPException(
                400, f"bad multipart upload: Too many files. Maximum number of files is {self.max_files}."
            )
        if _text(options[b"name"]) == self.field:
            self._name = _text(options[b"filename"])

    def data(self, data: bytes, start: int, end: int) -> None:
        if self._name is None:
            return
        if len(self._data) + end - start > self.max_bytes:
            raise HTTPException(413, f"{self._name or 'file'}: over the limit of {self.limit_mb:g} MiB")
        self._data += data[start:end]

    def end(self) -> None:
        if self._name is not None:
            self.finished.append((self._name, self._data))  # not copied: the next part starts a new buffer
        self._name, self._data = None, bytearray()


async def read_files(
    request: Request,
    decode: Callable[[bytearray, str], Awaitable[T]],
    *,
    field: str,
    max_bytes: int,
    limit_mb: float,
    max_files: int,
) -> list[tuple[str, T]]:
    """[(filename, await decode(bytes, filename))] for each file of multipart field `field`, in upload order.

    Only multipart/form-data bodies are read; any other type gives [] without its body being read. Bad
    multipart is a 400, a file over `max_bytes` a 413, both raised as soon as the body shows them.
    """
    kind, params = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data":
        return []
    if b"boundary" not in params:
        raise HTTPException(400, "bad multipart upload: no boundary in the Content-Type header")
    parts = _Parts(field, max_bytes, limit_mb, max_files, max_fields=max_files + 8)
    out: list[tuple[str, T]] = []
    try:
        parser = MultipartParser(params[b"boundary"], parts.callbacks())
        async for chunk in request.stream():
            parser.write(chunk)
            while parts.finished:
                name, data = parts.finished.pop(0)
                out.append((name, await decode(data, name)))
    except FormParserError as err:
        raise HTTPException(400, f"bad multipart upload: {type(err).__name__}: {err}") from err
    except ClientDisconnect:  # nobody is left to read the answer; this keeps the log free of a traceback
        raise HTTPException(400, "the client went away before its upload ended") from None
    return out
