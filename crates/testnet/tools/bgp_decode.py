#!/usr/bin/env python3
"""Decode raw BGP messages (16-byte marker included) into readable text.

Independent of the Rust codec on purpose: it is the second opinion used to
write crates/bgp/tests/golden/README.md. Usage: bgp_decode.py FILE...
Assumes 4-octet AS numbers in AS_PATH (all captures negotiate capability 65).
"""

import ipaddress
import struct
import sys

CAPS = {1: "multiprotocol", 2: "route-refresh", 6: "extended-message", 64: "graceful-restart",
        65: "4-octet-as", 69: "add-path", 70: "enhanced-route-refresh", 71: "long-lived-gr",
        73: "fqdn", 128: "route-refresh(old cisco)", 5: "extended-nexthop", 9: "bgp-role"}
ATTRS = {1: "ORIGIN", 2: "AS_PATH", 3: "NEXT_HOP", 4: "MED", 5: "LOCAL_PREF", 6: "ATOMIC_AGGREGATE",
         7: "AGGREGATOR", 8: "COMMUNITIES", 9: "ORIGINATOR_ID", 10: "CLUSTER_LIST", 14: "MP_REACH_NLRI",
         15: "MP_UNREACH_NLRI", 16: "EXT_COMMUNITIES", 32: "LARGE_COMMUNITIES"}


def prefixes(data, afi):
    out, i = [], 0
    width = 4 if afi == 1 else 16
    while i < len(data):
        plen = data[i]
        n = (plen + 7) // 8
        raw = data[i + 1 : i + 1 + n] + b"\0" * (width - n)
        addr = ipaddress.ip_address(raw)
        out.append("%s/%d" % (addr, plen))
        i += 1 + n
    return out


def caps(data):
    out, i = [], 0
    while i < len(data):
        code, ln = data[i], data[i + 1]
        val = data[i + 2 : i + 2 + ln]
        name = CAPS.get(code, "cap%d" % code)
        if code == 1:
            afi, _, safi = struct.unpack("!HBB", val)
            name += " afi=%d safi=%d" % (afi, safi)
        elif code == 65:
            name += " as=%d" % struct.unpack("!I", val)[0]
        elif code == 64:
            fl = struct.unpack("!H", val[:2])[0]
            fams = [struct.unpack("!HBB", val[j : j + 4]) for j in range(2, len(val), 4)]
            name += " flags=0x%x time=%d families=%s" % (fl >> 12, fl & 0xFFF, ["afi=%d safi=%d f=0x%02x" % f for f in fams])
        elif code == 73:
            hl = val[0]
            dl = val[1 + hl]
            name += " host=%r domain=%r" % (val[1 : 1 + hl].decode(), val[2 + hl : 2 + hl + dl].decode())
        elif code == 69:
            name += " " + str([struct.unpack("!HBB", val[j : j + 4]) for j in range(0, len(val), 4)])
        elif code == 71:
            name += " (len %d) %s" % (ln, val.hex())
        elif ln:
            name += " value=%s" % val.hex()
        out.append("cap %d %s" % (code, name))
        i += 2 + ln
    return out


def attrs(data):
    out, i = [], 0
    while i < len(data):
        flags, code = data[i], data[i + 1]
        if flags & 0x10:
            ln = struct.unpack("!H", data[i + 2 : i + 4])[0]
            val, i = data[i + 4 : i + 4 + ln], i + 4 + ln
        else:
            ln = data[i + 2]
            val, i = data[i + 3 : i + 3 + ln], i + 3 + ln
        name = ATTRS.get(code, "attr%d" % code)
        desc = val.hex()
        if code == 1:
            desc = ["IGP", "EGP", "INCOMPLETE"][val[0]]
        elif code == 2:
            segs, j = [], 0
            while j < len(val):
                st, n = val[j], val[j + 1]
                asns = struct.unpack("!%dI" % n, val[j + 2 : j + 2 + 4 * n])
                segs.append(("SET" if st == 1 else "SEQ") + str(list(asns)))
                j += 2 + 4 * n
            desc = " ".join(segs) or "(empty)"
        elif code == 3 or code == 9:
            desc = str(ipaddress.ip_address(val))
        elif code in (4, 5):
            desc = str(struct.unpack("!I", val)[0])
        elif code == 8:
            desc = " ".join("%d:%d" % struct.unpack("!HH", val[j : j + 4]) for j in range(0, len(val), 4))
        elif code == 32:
            desc = " ".join("%d:%d:%d" % struct.unpack("!III", val[j : j + 12]) for j in range(0, len(val), 12))
        elif code == 14:
            afi, safi, nhl = struct.unpack("!HBB", val[:4])
            nh = val[4 : 4 + nhl]
            nhs = [str(ipaddress.ip_address(nh[j : j + 16])) for j in range(0, nhl, 16)] if afi == 2 else [str(ipaddress.ip_address(nh))]
            desc = "afi=%d safi=%d nexthop=%s nlri=%s" % (afi, safi, nhs, prefixes(val[5 + nhl :], afi))
        elif code == 15:
            afi, safi = struct.unpack("!HB", val[:3])
            desc = "afi=%d safi=%d withdrawn=%s" % (afi, safi, prefixes(val[3:], afi))
        out.append("attr flags=0x%02x %s: %s" % (flags, name, desc))
    return out


def decode(raw):
    assert raw[:16] == b"\xff" * 16, "bad marker"
    length, t = struct.unpack("!HB", raw[16:19])
    assert length == len(raw), "length field %d != file size %d" % (length, len(raw))
    b = raw[19:]
    lines = []
    if t == 1:
        ver, asn, hold, rid, plen = struct.unpack("!BHH4sB", b[:10])
        lines.append("OPEN version=%d my_as=%d hold=%d router_id=%s" % (ver, asn, hold, ipaddress.ip_address(rid)))
        p = b[10 : 10 + plen]
        i = 0
        while i < len(p):
            pt, pl = p[i], p[i + 1]
            if pt == 2:
                lines += ["  " + c for c in caps(p[i + 2 : i + 2 + pl])]
            i += 2 + pl
    elif t == 2:
        wl = struct.unpack("!H", b[:2])[0]
        al = struct.unpack("!H", b[2 + wl : 4 + wl])[0]
        lines.append("UPDATE withdrawn=%s" % prefixes(b[2 : 2 + wl], 1))
        lines += ["  " + a for a in attrs(b[4 + wl : 4 + wl + al])]
        lines.append("  nlri=%s" % prefixes(b[4 + wl + al :], 1))
    elif t == 3:
        lines.append("NOTIFICATION code=%d subcode=%d data=%s" % (b[0], b[1], b[2:].hex()))
    elif t == 4:
        lines.append("KEEPALIVE")
    elif t == 5:
        afi, sub, safi = struct.unpack("!HBB", b[:4])
        lines.append("ROUTE-REFRESH afi=%d subtype=%d safi=%d" % (afi, sub, safi))
    lines[0] += " (length %d)" % length
    return lines


if __name__ == "__main__":
    for f in sys.argv[1:]:
        print("%s:" % f)
        for line in decode(open(f, "rb").read()):
            print("  " + line)
