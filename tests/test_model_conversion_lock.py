"""The first-run GGUF conversion happens once when several processes start together (``up``
starts the target and the draft service at the same time): the others wait for it."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from specgrove.modeling import loader


def test_concurrent_conversions_run_once(tmp_path, monkeypatch):
    calls = []

    def slow_convert(gguf: Path, target: Path) -> Path:
        calls.append(gguf)
        time.sleep(0.5)
        target.mkdir()
        (target / "config.json").write_text("{}")
        return target

    monkeypatch.setattr(loader, "_convert", slow_convert)
    target = tmp_path / "cache" / "model"
    results = []
    threads = [threading.Thread(target=lambda: results.append(loader._converted_gguf(tmp_path / "m.gguf", target)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [target] * 3
