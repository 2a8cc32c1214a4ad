"""A lab test host's servers: answers on the given TCP and UDP ports with its own name.

    python -m vpcgen.lab.host NAME --tcp 22,80,8080 --udp 5000-5009 [--whoami 7]

TCP: the first line sent back is "NAME\\n"; an HTTP request gets a 200 with the name (and a
cookie-free body), so haproxy health checks and balancing can be observed. UDP: every datagram
is answered with "NAME". Runs until killed (the lab kills it by PID).
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import threading


def ports(spec: str) -> list[int]:
    out = []
    for part in filter(None, spec.split(",")):
        low, _, high = part.partition("-")
        out += list(range(int(low), int(high or low) + 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--tcp", default="")
    parser.add_argument("--udp", default="")
    parser.add_argument("--whoami", type=int, default=0, help="TCP port that answers with the client's address")
    args = parser.parse_args()
    name = args.name.encode()

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.settimeout(5)
            try:
                first = self.request.recv(4096)
            except OSError:
                first = b""
            if first.startswith((b"GET ", b"HEAD ", b"POST ")):
                body = name + b"\n"
                self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                                     + str(len(body)).encode() + b"\r\n\r\n" + body)
                return
            self.request.sendall(name + b"\n")
            try:  # then echo, so a long-lived connection can be observed across a failover
                while data := self.request.recv(4096):
                    self.request.sendall(data)
            except OSError:
                pass

    class WhoAmI(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall(self.client_address[0].encode() + b"\n")

    class Udp(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(name, self.client_address)

    class TcpServer(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    servers = [TcpServer(("0.0.0.0", p), Tcp) for p in ports(args.tcp)]
    servers += [socketserver.ThreadingUDPServer(("0.0.0.0", p), Udp) for p in ports(args.udp)]
    if args.whoami:
        servers.append(TcpServer(("0.0.0.0", args.whoami), WhoAmI))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    main()
