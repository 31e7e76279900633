#!/usr/bin/env python3
"""A short ragd client in Python (grpcio): health check, ingest files, ask a question.

    python -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/python ragd_client.py --server 127.0.0.1:50051 --collection notes \\
        --ingest a.md --ingest b.html "What do the notes say about X?"

The Python modules are generated from the repository's `proto/` at start (grpcio-tools), so
the client always matches the API it sits beside. The API key, if the server wants one, comes
from --api-key or RAGD_API_KEY. Exit codes follow `ragd`: 0 answered, 1 error, 2 some files
were not stored, 3 refused (the documents do not answer), 75 server unavailable, overloaded
or out of time (retry later).
"""

import argparse
import importlib
import os
import pathlib
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[3] / "proto"
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def load_api(proto_dir: pathlib.Path):
    """Generates ragd.v1's Python modules into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="ragd-py-")
    files = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.glob("ragd/v1/*.proto"))
    if not files:
        sys.exit(f"no .proto files under {proto_dir}")
    wkt = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + files
    )
    if rc != 0:
        sys.exit(f"generating the API from {proto_dir} failed (protoc exit {rc})")
    sys.path.insert(0, out)
    names = ["collections", "documents", "answer"]
    msgs = {n: importlib.import_module(f"ragd.v1.{n}_pb2") for n in names}
    stubs = {n: importlib.import_module(f"ragd.v1.{n}_pb2_grpc") for n in names}
    return msgs, stubs


FORMATS = {".md": "DOCUMENT_FORMAT_MARKDOWN", ".markdown": "DOCUMENT_FORMAT_MARKDOWN",
           ".html": "DOCUMENT_FORMAT_HTML", ".htm": "DOCUMENT_FORMAT_HTML",
           ".pdf": "DOCUMENT_FORMAT_PDF"}


def ingest(msgs, stubs, channel, md, collection, paths):
    """Creates the collection if needed, then streams the files; prints one line per ack."""
    cpb, dpb = msgs["collections"], msgs["documents"]
    collections = stubs["collections"].CollectionsStub(channel)
    try:
        collections.Get(cpb.GetCollectionRequest(name=collection), metadata=md)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        collections.Create(cpb.CreateCollectionRequest(name=collection), metadata=md)
        print(f"created collection {collection}")

    def requests():
        for p in paths:
            path = pathlib.Path(p)
            fmt = FORMATS.get(path.suffix.lower(), "DOCUMENT_FORMAT_TEXT")
            doc = dpb.DocumentInput(id=path.name, content=path.read_bytes(),
                                    format=dpb.DocumentFormat.Value(fmt), source=str(path))
            yield dpb.IngestStreamRequest(collection=collection, document=doc)

    failed = 0
    docs = stubs["documents"].DocumentsStub(channel)
    for ack in docs.IngestStream(requests(), metadata=md):
        status = dpb.DocumentStatus.Name(ack.result.status).removeprefix("DOCUMENT_STATUS_")
        detail = f" ({ack.result.error})" if ack.result.error else f", {ack.result.chunks} chunks"
        print(f"  {ack.result.id}: {status.lower()}{detail}")
        failed += ack.result.status == dpb.DOCUMENT_STATUS_FAILED
    return failed


def ask(msgs, stubs, channel, md, collection, question, timeout):
    """AskStream: prints the answer as it is generated, then the cited sources."""
    apb = msgs["answer"]
    answer = None
    streamed = False
    stream = stubs["answer"].AnswerStub(channel).AskStream(
        apb.AskRequest(collection=collection, question=question), metadata=md, timeout=timeout)
    for event in stream:
        kind = event.WhichOneof("event")
        if kind == "sources":
            print(f"({len(event.sources.sources)} sources retrieved)")
        elif kind == "delta":
            print(event.delta.text, end="", flush=True)
            streamed = True
        elif kind == "answer":
            answer = event.answer
    print()
    if answer is None:
        sys.exit("the stream ended without an answer")
    if answer.refused:
        if not streamed:  # refused before generation: nothing was streamed
            print(answer.answer)
        return 3
    if answer.kind == apb.ANSWER_KIND_EXTRACT:
        print("(quoted from the sources: the model's own answer did not hold)")
    for c in answer.citations:
        print(f"[{c.marker}] {c.title} ({c.document_id}, bytes {c.start}..{c.end})")
        print(f"    {c.snippet}")
    u = answer.usage
    print(f"{u.generated_tokens} tokens, first after {u.time_to_first_token_ms:.0f} ms")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("question")
    ap.add_argument("--server", default=os.environ.get("RAGD_SERVER", "127.0.0.1:50051"),
                    help="host:port of ragd serve")
    ap.add_argument("--api-key", default=os.environ.get("RAGD_API_KEY"))
    ap.add_argument("--collection", default="sample")
    ap.add_argument("--ingest", action="append", default=[], metavar="FILE",
                    help="a file to add to the collection first (repeatable)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds for the answer")
    ap.add_argument("--proto-dir", type=pathlib.Path, default=PROTO_DIR)
    args = ap.parse_args()

    msgs, stubs = load_api(args.proto_dir)
    md = [("authorization", f"Bearer {args.api_key}")] if args.api_key else []
    target = args.server.removeprefix("http://")
    with grpc.insecure_channel(target) as channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10)
            print(f"server {target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}")
            failed = ingest(msgs, stubs, channel, md, args.collection, args.ingest) if args.ingest else 0
            code = ask(msgs, stubs, channel, md, args.collection, args.question, args.timeout)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 75 if e.code() in RETRYABLE else 1
    return code or (2 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
