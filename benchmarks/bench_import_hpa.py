"""Public-HPA import throughput from a local HTTP server, full-size 16-bit fields.

Serves one real 2048x2048 16-bit gzip TIFF channel (``shared/data/hpa-real``) as every channel
of N fields from a folder on 127.0.0.1 and imports them at 768 px with 1 and 2 worker
processes. Prints fields/s and the ratio to the 1-worker baseline of the same run. The network
is loopback, so this measures the CPU side (gunzip, TIFF decode, area resize, 8-bit conversion,
PNG encode and write); on the real server downloads dominate.

    python benchmarks/bench_import_hpa.py [N]
"""

from __future__ import annotations

import functools
import http.server
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from hpasc.importer import ImportOptions, import_public_hpa

SRC = Path(__file__).resolve().parents[2] / "shared/data/hpa-real/bit-depth/383_D2_1_blue.tif.gz"


def main(n: int = 8) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        site = root / "site" / "1"
        site.mkdir(parents=True)
        ids = [f"1_A{i}_1" for i in range(n)]
        for fid in ids:
            for color in ("red", "green", "blue", "yellow"):
                shutil.copy(SRC, site / f"{fid}_{color}.tif.gz")
        table = root / "table.csv"
        rows = [f"1/{fid},0,False,A-431" for fid in ids]
        table.write_text("Image,Label_idx,in_trainset,Cellline\n" + "\n".join(rows) + "\n")

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(root / "site"))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        options = ImportOptions(size=768, base_url=f"http://127.0.0.1:{httpd.server_address[1]}")
        print(
            f"{n} fields x 4 channels, 2048^2 16-bit tif.gz ({SRC.stat().st_size / 1e6:.1f} MB each) -> 768^2 uint8 PNG"
        )
        print(f"{'workers':>8} {'seconds':>8} {'fields/s':>9} {'vs 1 worker':>12}")
        base = None
        for workers in (1, 2):
            out = root / f"out{workers}"
            start = time.perf_counter()
            summary = import_public_hpa(table, out, options, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            assert summary.run.done == n, summary
            base = base or seconds
            print(f"{workers:>8} {seconds:>8.2f} {n / seconds:>9.2f} {base / seconds:>11.2f}x")
        httpd.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
