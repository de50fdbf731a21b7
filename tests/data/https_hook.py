"""A webhook receiver over https for the notification tests: serves POST on 127.0.0.1:<port>
with the given certificate chain and key, appending one JSON line per request to <out>
(its Idempotency-Key and body). Usage: https_hook.py <port> <cert> <key> <out>"""
import http.server
import json
import ssl
import sys

port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": self.headers.get("Idempotency-Key", ""),
                                "body": body.decode("utf-8")}) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", port), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
