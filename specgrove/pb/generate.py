"""Regenerate the Python stubs in ``specgrove/pb/v1`` from ``proto/specgrove/v1/*.proto``.

    python -m specgrove.pb.generate            # rewrite the committed stubs
    python -m specgrove.pb.generate --check    # exit 1 if they differ (a test runs this)

protoc names modules after the proto package (``specgrove.v1``); the stubs live in
``specgrove.pb.v1``, so the generated imports are rewritten to that package.
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "v1"


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "specgrove/v1").glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *protos]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted((Path(tmp) / "specgrove/v1").iterdir()):
            text = re.sub(r"\bfrom specgrove\.v1 import", "from specgrove.pb.v1 import", f.read_text())
            (out_dir / f.name).write_text(text)
    (out_dir / "__init__.py").write_text('"""Generated protobuf / gRPC stubs (see specgrove/pb/generate.py)."""\n')


def check() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = {p.name: p.read_text() for p in Path(tmp).iterdir()}
    committed = {p.name: p.read_text() for p in OUT_DIR.iterdir() if p.is_file()}
    return fresh == committed


if __name__ == "__main__":
    if "--check" in sys.argv:
        ok = check()
        print("stubs are up to date" if ok else "stubs differ: run python -m specgrove.pb.generate")
        sys.exit(0 if ok else 1)
    generate(OUT_DIR)
