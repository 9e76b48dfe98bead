"""Serves a directory over HTTP on 127.0.0.1 and a free port, for the example page check.

usage: python3 serve.py DIRECTORY PORT_FILE
Writes the chosen port to PORT_FILE once listening, then serves until killed.
"""

import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    # Older Pythons do not know .wasm; browsers want application/wasm for streaming compile.
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm"}

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def main():
    directory, port_file = sys.argv[1], sys.argv[2]
    handler = functools.partial(Handler, directory=directory)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        with open(port_file, "w", encoding="utf-8") as out:
            out.write(str(server.server_address[1]))
        server.serve_forever()


if __name__ == "__main__":
    main()
