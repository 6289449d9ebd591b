#!/usr/bin/env python3
# The realistic benchmark app: what an edge inference service does at its first request.
# At start it imports numpy and loads its model (24 MiB of float32 weights) into memory; each
# GET / runs the model (a matrix-vector product over all of it) and answers with a summary.
# So the first answer after synthesis needs the Python runtime, numpy's libraries and the
# whole model in RAM, not just a listening socket.
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np

W = np.load("/opt/app/model.npy")
x = np.linspace(-1.0, 1.0, W.shape[1], dtype=np.float32)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        y = W @ x
        body = json.dumps({"model": list(W.shape), "argmax": int(y.argmax()),
                           "max": round(float(y.max()), 4), "norm": round(float(np.linalg.norm(y)), 4)})
        data = (body + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # no per-request disk writes
        pass


HTTPServer(("", 8080), Handler).serve_forever()
