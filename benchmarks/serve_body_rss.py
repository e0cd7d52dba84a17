"""Peak RSS of `imgtrain serve` around a 100 MB /v2 JSON body, sent with and without Content-Length.

Usage: python benchmarks/serve_body_rss.py RUN_DIR   (a run on 28x28x1 images, e.g. a Fashion-MNIST run)
Prints the server's VmHWM (peak resident memory, kB) after each request; issue #27 asked for the figure.
"""

import http.client
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PORT = 8765


def peak_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def post(path: str, body: bytes, chunked: bool = False) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(body)))))
    conn.endheaders()
    try:
        for i in range(0, len(body), 1 << 20):  # 1 MiB at a time, as a client streaming a file would
            part = body[i : i + (1 << 20)]
            conn.send(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
        if chunked:
            conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body was sent
    reply = conn.getresponse()
    return f"{reply.status} {reply.read()[:120].decode()}"


def main(run: str) -> None:
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("imgtrain")), "serve", run, "--port", str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        name = Path(run).resolve().name  # the /v2 model name defaults to the run directory's name
        path = f"/v2/models/{name}/infer"
        head = b'{"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8", "data": ['
        good = head + b"0," * 783 + b"0]}]}"
        big = head + b"0," * (50_000_000 - 1) + b"0]}]}"  # 100 MB of numbers for a one-image shape
        print(f"ready: peak {peak_kb(server.pid):,} kB")
        print(f"one image: {post(path, good)[:3]}; peak {peak_kb(server.pid):,} kB")
        print(f"{len(big) / 1e6:.0f} MB, Content-Length: {post(path, big)}; peak {peak_kb(server.pid):,} kB")
        print(f"{len(big) / 1e6:.0f} MB, chunked: {post(path, big, chunked=True)}; peak {peak_kb(server.pid):,} kB")
        print(f"one image after: {post(path, good)[:3]}; peak {peak_kb(server.pid):,} kB")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(sys.argv[1])
