"""HTTP routes of file delivery: the seller's resumable uploads, the buyer's ranged downloads.

Uploads use the platform's bearer tokens (role ``seller``, the product's own seller). Downloads
use a *delivery token* (``POST /v1/grants/{id}/tokens``, scope ``file``) in the same
``Authorization: Bearer`` header, which the platform's guard lets through on those routes
(``opt=DELIVERY_TOKEN``): `FileDeliveries` checks the token itself.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, RequestBody, Schema
from litestar.params import FromPath, HeaderParameter, Parameter
from litestar.response import Stream

from exchange.delivery.files import (
    ChunkInterrupted,
    FileDeliveries,
    FileUploads,
    GrantFiles,
    RangeNotSatisfiable,
    Upload,
)
from exchange.delivery.storage import MAX_CHUNK_BYTES
from exchange.platform.audit import Actor
from exchange.platform.auth import DELIVERY_TOKEN, Principal, requires
from exchange.platform.http import (
    PROBLEM_JSON,
    DocumentedOperation,
    Problem,
    handle_dataex_error,
    response_headers,
)

Uploads = NamedDependency[FileUploads]
Deliveries = NamedDependency[FileDeliveries]
ActorDep = NamedDependency[Actor]
PrincipalDep = NamedDependency[Principal]
OCTETS = "application/octet-stream"
FileName = Annotated[str, Parameter(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


@dataclasses.dataclass
class ChunkOperation(DocumentedOperation):
    """The chunk's body is raw bytes, streamed by the handler (Litestar sees no ``data``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = RequestBody(
            required=True,
            description=f"The chunk's bytes (at most {MAX_CHUNK_BYTES}; exactly the upload's"
            " chunk_bytes, the last chunk what is left of the file).",
            content={
                OCTETS: OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                )
            },
        )


_FILE_RESPONSES = {
    200: ResponseSpec(data_container=bytes, media_type=OCTETS, generate_examples=False,
                      description="The whole file (decrypted), streamed"),
    206: ResponseSpec(data_container=bytes, media_type=OCTETS, generate_examples=False,
                      description="One range of the file (Content-Range), streamed"),
    304: ResponseSpec(data_container=None, generate_examples=False,
                      description="If-None-Match matched the file's ETag (its SHA-256)"),
    409: ResponseSpec(data_container=Problem, media_type=PROBLEM_JSON, generate_examples=False,
                      description="The seller has not uploaded the file yet (file_not_stored)"),
    416: ResponseSpec(data_container=Problem, media_type=PROBLEM_JSON, generate_examples=False,
                      description="The range is past the end, malformed, or several ranges"
                      " (Content-Range: bytes */size)"),
}  # fmt: skip


_ETAG = ("The file's SHA-256, quoted: send it in If-None-Match (304) or If-Range", True)
_KEPT = {
    "ETag": _ETAG,
    "Accept-Ranges": ("bytes: one Range of bytes may be asked for", True),
    "Cache-Control": ("private: the bytes are the buyer's alone", True),
}
_SENT = {
    **_KEPT,
    "Content-Length": ("Bytes in this answer", True),
    "Content-Disposition": ('attachment; filename="<name>"', True),
}
_FILE_HEADERS = {
    200: _SENT,
    206: {**_SENT, "Content-Range": ("bytes <first>-<last>/<size>", True)},
    304: _KEPT,
    416: {"Content-Range": ("bytes */<size>", True)},
}


class RevisionFileController(Controller):
    path = "/v1/products/{product_id:uuid}/revisions/{revision:int}/files"
    tags = ["files"]

    @post(
        "/{name:str}/uploads",
        operation_id="startFileUpload",
        opt=requires("seller"),
        responses={
            200: ResponseSpec(
                Upload,
                description="The upload already open, or the one that"
                " stored the file (state complete)",
            ),
        },
    )
    async def start(
        self,
        product_id: FromPath[uuid.UUID],
        revision: Annotated[int, Parameter(ge=1, le=2**31 - 1)],
        name: FileName,
        file_uploads: Uploads,
        principal: PrincipalDep,
    ) -> Response[Upload]:
        """Open an upload of a file the revision declares (201), or get back the open one, or
        the one that stored it (200, state ``complete``). It says the chunk size and which
        chunks are received."""
        upload, created = await file_uploads.begin(principal, product_id, revision, name)
        return Response(upload, status_code=201 if created else 200)


class UploadController(Controller):
    path = "/v1/uploads"
    tags = ["files"]

    @get("/{upload_id:uuid}", operation_id="getFileUpload", opt=requires("seller"))
    async def progress(
        self, upload_id: FromPath[uuid.UUID], file_uploads: Uploads, principal: PrincipalDep
    ) -> Upload:
        """An upload's progress: its chunks received, its state."""
        return await file_uploads.progress(principal, upload_id)

    @put(
        "/{upload_id:uuid}/chunks/{index:int}",
        operation_id="putFileChunk",
        opt=requires("seller"),
        status_code=200,
        request_max_body_size=MAX_CHUNK_BYTES,
        operation_class=ChunkOperation,
    )
    async def put_chunk(
        self,
        request: Request[Any, Any, Any],
        upload_id: FromPath[uuid.UUID],
        index: Annotated[int, Parameter(ge=0, le=2**31 - 1)],
        file_uploads: Uploads,
        principal: PrincipalDep,
        chunk_sha256: Annotated[
            str | None,
            HeaderParameter(name="X-Chunk-SHA256", max_length=64,
                      description="hex SHA-256 of the chunk's bytes"),
        ] = None,
    ) -> Upload:  # fmt: skip
        """Send chunk ``index`` (raw bytes, ``application/octet-stream``). A chunk whose bytes
        do not hash to X-Chunk-SHA256 is refused (422 ``chunk_corrupt``) and may be sent
        again; a chunk sent again replaces the earlier copy."""
        return await file_uploads.put_chunk(
            principal, upload_id, index, chunk_sha256, request.stream()
        )

    @post(
        "/{upload_id:uuid}/complete",
        operation_id="completeFileUpload",
        opt=requires("seller"),
        status_code=200,
    )
    async def complete(
        self,
        upload_id: FromPath[uuid.UUID],
        file_uploads: Uploads,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Upload:
        """Store the file: every chunk received and the whole file's SHA-256 and size the
        revision's (else 422 ``file_digest_mismatch``; nothing is stored and the upload is
        abandoned)."""
        return await file_uploads.complete(actor, principal, upload_id)


async def _body(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    """The request body as it streams in; a client gone mid-body is its problem, not ours (a
    400 nobody reads, instead of a 500 in the log)."""
    try:
        async for piece in request.stream():
            yield piece
    except InternalServerException as error:
        if "disconnected" not in str(error.detail):
            raise
        raise ChunkInterrupted("the body ended early: send the chunk again") from error


def _delivery_token(request: Request[Any, Any, Any]) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class GrantFileController(Controller):
    path = "/v1/grants/{grant_id:uuid}/files"
    tags = ["files"]

    @get("/", operation_id="listGrantFiles", opt=DELIVERY_TOKEN)
    async def list_files(
        self, request: Request[Any, Any, Any], grant_id: FromPath[uuid.UUID],
        file_deliveries: Deliveries,
    ) -> GrantFiles:  # fmt: skip
        """The files the grant delivers (delivery token of scope ``file`` as the bearer)."""
        return await file_deliveries.files(_delivery_token(request), grant_id)

    @get(
        "/{name:str}",
        operation_id="downloadGrantFile",
        opt=DELIVERY_TOKEN | response_headers(_FILE_HEADERS),
        responses=_FILE_RESPONSES,
    )
    async def download(
        self,
        request: Request[Any, Any, Any],
        grant_id: FromPath[uuid.UUID],
        name: FileName,
        file_deliveries: Deliveries,
        range_header: Annotated[str | None, HeaderParameter(name="Range", max_length=200)] = None,
        if_range: Annotated[str | None, HeaderParameter(name="If-Range", max_length=200)] = None,
        if_none_match: Annotated[
            str | None, HeaderParameter(name="If-None-Match", max_length=1000)
        ] = None,
    ) -> Response[Any]:
        """The file's bytes (delivery token of scope ``file`` as the bearer), decrypted and
        streamed; one ``Range: bytes=a-b`` gives 206. Every byte sent is metered; a download
        longer than what is left of the grant's quota is refused (403 ``quota_exhausted``)."""
        try:
            answer = await file_deliveries.download(
                _delivery_token(request), grant_id, name, range_header=range_header,
                if_range=if_range, if_none_match=if_none_match,
            )  # fmt: skip
        except RangeNotSatisfiable as refused:
            response = handle_dataex_error(request, refused)
            response.headers["Content-Range"] = f"bytes */{refused.size}"
            return response
        if answer.body is None:
            return Response(None, status_code=answer.status, headers=answer.headers)
        body: AsyncIterator[bytes] = answer.body
        return Stream(body, status_code=answer.status, headers=answer.headers, media_type=OCTETS)
