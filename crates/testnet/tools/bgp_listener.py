#!/usr/bin/env python3
"""Minimal passive BGP peer that records every message it receives.

It accepts TCP connections on port 179 (IPv4 and IPv6), answers the peer's
OPEN with its own OPEN + KEEPALIVE, keeps the session alive, and writes every
received message verbatim (16-byte marker included) to
<outdir>/<family>_<seq>_<type>.bin. One JSON line per message goes to
<outdir>/index.jsonl so a driver can wait for e.g. End-of-RIB.

Optionally (--send-refresh) it sends a ROUTE-REFRESH for each negotiated
family after the peer's End-of-RIB, so that peers speaking Enhanced Route
Refresh (RFC 7313) answer with BoRR / EoRR markers.

Used by capture_golden.py; standard library only.
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time

MARKER = b"\xff" * 16
TYPES = {1: "open", 2: "update", 3: "notification", 4: "keepalive", 5: "route_refresh"}


def msg(mtype, body=b""):
    return MARKER + struct.pack("!HB", 19 + len(body), mtype) + body


def cap(code, value=b""):
    return struct.pack("!BB", code, len(value)) + value


def build_open(asn, router_id, hold):
    caps = b"".join(
        [
            cap(1, struct.pack("!HBB", 1, 0, 1)),  # MP ipv4 unicast
            cap(1, struct.pack("!HBB", 2, 0, 1)),  # MP ipv6 unicast
            cap(2),  # route refresh
            cap(70),  # enhanced route refresh
            cap(65, struct.pack("!I", asn)),  # 4-octet AS
            # graceful restart: restart time 120 s, both families, no F bit
            cap(64, struct.pack("!H", 120) + struct.pack("!HBB", 1, 1, 0) + struct.pack("!HBB", 2, 1, 0)),
        ]
    )
    params = struct.pack("!BB", 2, len(caps)) + caps
    my_as = asn if asn < 65536 else 23456
    body = struct.pack("!BHH4sB", 4, my_as, hold, socket.inet_aton(router_id), len(params)) + params
    return msg(1, body)


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def classify_update(body):
    """Return a short tag for an UPDATE: eor_ipv4, eor_ipv6, withdraw, mp_reach, nlri, ..."""
    wlen = struct.unpack("!H", body[0:2])[0]
    alen = struct.unpack("!H", body[2 + wlen : 4 + wlen])[0]
    attrs = body[4 + wlen : 4 + wlen + alen]
    nlri = body[4 + wlen + alen :]
    if wlen == 0 and alen == 0 and not nlri:
        return "eor_ipv4"
    codes = []
    i = 0
    while i < len(attrs):
        flags, code = attrs[i], attrs[i + 1]
        if flags & 0x10:
            ln = struct.unpack("!H", attrs[i + 2 : i + 4])[0]
            val = attrs[i + 4 : i + 4 + ln]
            i += 4 + ln
        else:
            ln = attrs[i + 2]
            val = attrs[i + 3 : i + 3 + ln]
            i += 3 + ln
        codes.append((code, val))
    if len(codes) == 1 and codes[0][0] == 15 and len(codes[0][1]) == 3:
        return "eor_afi%d" % struct.unpack("!H", codes[0][1][0:2])[0]
    if any(c == 14 for c, _ in codes):
        return "mp_reach"
    if any(c == 15 for c, _ in codes):
        return "mp_unreach"
    if wlen and not nlri:
        return "withdraw"
    return "nlri"


class Session:
    def __init__(self, conn, peer, args, family):
        self.conn = conn
        self.peer = peer
        self.args = args
        self.family = family
        self.seq = 0
        self.lock = threading.Lock()
        self.alive = True
        self.refreshed = set()

    def send(self, data):
        with self.lock:
            self.conn.sendall(data)

    def keepalive_loop(self, interval):
        while self.alive:
            time.sleep(interval)
            try:
                self.send(msg(4))
            except OSError:
                return

    def record(self, raw, mtype, tag):
        self.seq += 1
        name = "%s_%03d_%s%s.bin" % (self.family, self.seq, TYPES.get(mtype, "type%d" % mtype), "_" + tag if tag else "")
        with open(os.path.join(self.args.outdir, name), "wb") as f:
            f.write(raw)
        line = {"t": time.time(), "family": self.family, "peer": self.peer, "seq": self.seq, "type": TYPES.get(mtype), "tag": tag, "file": name, "len": len(raw)}
        with open(os.path.join(self.args.outdir, "index.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")

    def run(self):
        asn = self.args.asn4 if self.family == "v4" else self.args.asn6
        while True:
            hdr = recv_exact(self.conn, 19)
            if hdr is None:
                break
            length, mtype = struct.unpack("!HB", hdr[16:19])
            body = recv_exact(self.conn, length - 19) if length > 19 else b""
            if body is None:
                break
            tag = ""
            if mtype == 2:
                tag = classify_update(body)
            elif mtype == 5:
                tag = {0: "request", 1: "borr", 2: "eorr"}.get(body[2], "subtype%d" % body[2])
            elif mtype == 3:
                tag = "code%d_sub%d" % (body[0], body[1])
            self.record(hdr + body, mtype, tag)
            if mtype == 1:
                hold = struct.unpack("!H", body[3:5])[0]
                self.send(build_open(asn, self.args.router_id, 90) + msg(4))
                interval = max(1, min(hold, 90) // 3)
                threading.Thread(target=self.keepalive_loop, args=(interval,), daemon=True).start()
            elif mtype == 2 and tag.startswith("eor") and self.args.send_refresh:
                afi = 1 if tag in ("eor_ipv4", "eor_afi1") else 2
                if afi not in self.refreshed:
                    self.refreshed.add(afi)
                    self.send(msg(5, struct.pack("!HBB", afi, 0, 1)))
            elif mtype == 3:
                break
        self.alive = False
        self.conn.close()


def serve(sock, args, family):
    while True:
        conn, addr = sock.accept()
        s = Session(conn, addr[0], args, family)
        threading.Thread(target=s.run, daemon=True).start()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--router-id", default="198.18.0.2")
    ap.add_argument("--asn4", type=int, default=64512, help="AS used towards IPv4 peers")
    ap.add_argument("--asn6", type=int, default=65001, help="AS used towards IPv6 peers")
    ap.add_argument("--port", type=int, default=179)
    ap.add_argument("--send-refresh", action="store_true")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    for fam, af, host in (("v4", socket.AF_INET, "0.0.0.0"), ("v6", socket.AF_INET6, "::")):
        s = socket.socket(af, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if af == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, args.port))
        s.listen(8)
        threading.Thread(target=serve, args=(s, args, fam), daemon=True).start()
    print("listening", flush=True)
    time.sleep(args.timeout)
    sys.exit(0)


if __name__ == "__main__":
    main()
