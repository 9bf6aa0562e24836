#!/usr/bin/env python3
"""Capture golden BGP messages from BIRD, FRR and GoBGP.

For each daemon: two network namespaces joined by a veth pair
(daemon 198.18.0.1 / 2001:db8::1, listener 198.18.0.2 / 2001:db8::2),
bgp_listener.py in the listener namespace, the daemon in the other with a
generated config (its own sockets and pid files in a temp dir). Two sessions:
  v4: iBGP AS 64512 <-> AS 64512 over IPv4, family ipv4-unicast, export
      with community 64512:100, large community 64512:1:2, MED 50, LOCAL_PREF 200
  v6: eBGP AS 64512 <-> AS 65001 over IPv6, family ipv6-unicast
The driver waits for End-of-RIB, withdraws prefixes, lets the listener request a route refresh,
asks the daemon for an inbound soft reset (ROUTE-REFRESH), then shuts the
peers down administratively (NOTIFICATION Cease). Selected messages are
copied to crates/bgp/tests/golden/<daemon>_<what>.bin.

Run as root: python3 crates/testnet/tools/capture_golden.py [--keep WORKDIR] [--out DIR] [bird frr gobgp]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.normpath(os.path.join(HERE, "..", "..", "bgp", "tests", "golden"))
PFX = "tgc%d" % (os.getpid() % 10000)
NS_D = PFX + "-d"
NS_L = PFX + "-l"


def sh(*cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), r.stderr.strip()))
    return r.stdout


def nsx(ns, *cmd, check=True):
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


def setup():
    for ns in (NS_D, NS_L):
        sh("ip", "netns", "add", ns)
        nsx(ns, "ip", "link", "set", "lo", "up")
    # fixed MACs keep the IPv6 link-local next hops identical between runs
    sh("ip", "link", "add", PFX + "d", "netns", NS_D, "address", "02:00:00:00:00:01", "type", "veth",
       "peer", "name", PFX + "l", "netns", NS_L, "address", "02:00:00:00:00:02")
    for ns, ifc, v4, v6 in ((NS_D, PFX + "d", "198.18.0.1/24", "2001:db8::1/64"), (NS_L, PFX + "l", "198.18.0.2/24", "2001:db8::2/64")):
        nsx(ns, "ip", "addr", "add", v4, "dev", ifc)
        nsx(ns, "ip", "addr", "add", v6, "dev", ifc, "nodad")
        nsx(ns, "ip", "link", "set", ifc, "up")
    # link-local addresses still run DAD; wait until they are usable
    for _ in range(50):
        out = nsx(NS_D, "ip", "-6", "addr", "show", "tentative")
        if not out.strip():
            break
        time.sleep(0.1)


def teardown():
    for ns in (NS_D, NS_L):
        pids = sh("ip", "netns", "pids", ns, check=False).split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("ip", "netns", "del", ns, check=False)


def bird_conf(d):
    return """router id 198.18.0.1;
log "%s/bird.log" all;
protocol device {}
protocol static s4 { ipv4; route 100.64.1.0/24 blackhole; route 100.64.11.0/24 blackhole; }
protocol static s6 { ipv6; route 2001:db8:1::/48 blackhole; }
protocol bgp p4 {
  local 198.18.0.1 as 64512;
  neighbor 198.18.0.2 as 64512;
  graceful restart on;
  ipv4 {
    import all;
    export filter {
      bgp_community.add((64512,100));
      bgp_large_community.add((64512,1,2));
      bgp_med = 50;
      bgp_local_pref = 200;
      accept;
    };
  };
}
protocol bgp p6 {
  local 2001:db8::1 as 64512;
  neighbor 2001:db8::2 as 65001;
  graceful restart on;
  ipv6 { import all; export all; };
}
""" % d


FRR_CONF = """frr defaults traditional
hostname golden
log file %s/bgpd.log
!
router bgp 64512
 bgp router-id 198.18.0.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 bgp graceful-restart
 neighbor 198.18.0.2 remote-as 64512
 neighbor 2001:db8::2 remote-as 65001
 address-family ipv4 unicast
  network 100.64.2.0/24
  network 100.64.12.0/24
  neighbor 198.18.0.2 route-map SETATTR out
  no neighbor 2001:db8::2 activate
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:2::/48
  neighbor 2001:db8::2 activate
 exit-address-family
!
route-map SETATTR permit 10
 set community 64512:100
 set large-community 64512:1:2
 set metric 50
 set local-preference 200
!
"""

GOBGP_CONF = """[global.config]
  as = 64512
  router-id = "198.18.0.1"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "198.18.0.2"
    peer-as = 64512
  [neighbors.graceful-restart.config]
    enabled = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true

[[neighbors]]
  [neighbors.config]
    neighbor-address = "2001:db8::2"
    peer-as = 65001
  [neighbors.graceful-restart.config]
    enabled = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
"""


def start_daemon(name, d):
    log = open(os.path.join(d, name + ".out"), "w")
    if name == "bird":
        conf = os.path.join(d, "bird.conf")
        open(conf, "w").write(bird_conf(d))
        cmd = ["bird", "-f", "-c", conf, "-s", os.path.join(d, "bird.ctl"), "-P", os.path.join(d, "bird.pid")]
    elif name == "frr":
        conf = os.path.join(d, "bgpd.conf")
        open(conf, "w").write(FRR_CONF % d)
        cmd = ["/usr/lib/frr/bgpd", "-f", conf, "-i", os.path.join(d, "bgpd.pid"), "-z", os.path.join(d, "zserv.api"),
               "--vty_socket", d, "-S", "-Z", "-n", "-P", "0"]
    else:
        conf = os.path.join(d, "gobgpd.toml")
        open(conf, "w").write(GOBGP_CONF)
        cmd = ["gobgpd", "-f", conf, "--api-hosts", "127.0.0.1:50051", "--pprof-disable", "-p"]
    # own UTS namespace: the FQDN capability then carries "golden", not the host's name
    wrap = ["unshare", "--uts", "sh", "-c", 'hostname golden && exec "$@"', "sh"]
    p = subprocess.Popen(["ip", "netns", "exec", NS_D] + wrap + cmd, stdout=log, stderr=subprocess.STDOUT)
    if name == "gobgp":
        for _ in range(50):
            if subprocess.run(["ip", "netns", "exec", NS_D, "gobgp", "global"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        gob = ["gobgp", "-u", "127.0.0.1", "-p", "50051"]
        nsx(NS_D, *gob, "global", "rib", "add", "-a", "ipv4", "100.64.3.0/24", "community", "64512:100",
            "large-community", "64512:1:2", "med", "50", "local-pref", "200")
        nsx(NS_D, *gob, "global", "rib", "add", "-a", "ipv4", "100.64.13.0/24", "community", "64512:100",
            "large-community", "64512:1:2", "med", "50", "local-pref", "200")
        nsx(NS_D, *gob, "global", "rib", "add", "-a", "ipv6", "2001:db8:3::/48")
    return p


def control(name, d, action):
    if name == "bird":
        c = ["birdc", "-s", os.path.join(d, "bird.ctl")]
        cmds = {"softin": [c + ["reload", "in", "p4"]], "withdraw": [c + ["disable", "s4"], c + ["disable", "s6"]], "shutdown": [c + ["disable", "p4"], c + ["disable", "p6"]]}
    elif name == "frr":
        c = ["vtysh", "--vty_socket", d, "-d", "bgpd"]
        cmds = {
            "softin": [c + ["-c", "clear bgp ipv4 unicast 198.18.0.2 soft in"]],
            "withdraw": [c + ["-c", "configure terminal", "-c", "router bgp 64512", "-c", "address-family ipv4 unicast",
                              "-c", "no network 100.64.12.0/24", "-c", "exit-address-family",
                              "-c", "address-family ipv6 unicast", "-c", "no network 2001:db8:2::/48"]],
            "shutdown": [c + ["-c", "configure terminal", "-c", "router bgp 64512", "-c", "neighbor 198.18.0.2 shutdown",
                              "-c", "neighbor 2001:db8::2 shutdown"]],
        }
    else:
        c = ["gobgp", "-u", "127.0.0.1", "-p", "50051", "neighbor"]
        g = ["gobgp", "-u", "127.0.0.1", "-p", "50051", "global", "rib", "del"]
        cmds = {"softin": [c + ["198.18.0.2", "softresetin", "-a", "ipv4"]],
                "withdraw": [g + ["-a", "ipv4", "100.64.13.0/24"], g + ["-a", "ipv6", "2001:db8:3::/48"]],
                "shutdown": [c + ["198.18.0.2", "disable"], c + ["2001:db8::2", "disable"]]}
    for cmd in cmds[action]:
        out = nsx(NS_D, *cmd, check=False)
        print("  %s %s: %s" % (name, action, out.strip()[:200]))


def index(outdir):
    path = os.path.join(outdir, "index.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path)]


def wait_for(outdir, pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if pred(index(outdir)):
            return True
        time.sleep(0.2)
    print("  timeout waiting for %s" % what)
    return False


def has(ix, family, typ, tag_prefix=""):
    return any(m["family"] == family and m["type"] == typ and (m["tag"] or "").startswith(tag_prefix) for m in ix)


def capture(name, work):
    d = os.path.join(work, name)
    outdir = os.path.join(d, "msgs")
    os.makedirs(outdir)
    listener = subprocess.Popen(["ip", "netns", "exec", NS_L, sys.executable, os.path.join(HERE, "bgp_listener.py"),
                                 "--outdir", outdir, "--send-refresh", "--timeout", "90"],
                                stdout=subprocess.PIPE, stderr=open(os.path.join(d, "listener.err"), "w"), text=True)
    listener.stdout.readline()
    daemon = start_daemon(name, d)
    try:
        wait_for(outdir, lambda ix: has(ix, "v4", "update", "eor") and has(ix, "v6", "update", "eor"), 40, "End-of-RIB")
        time.sleep(3)  # BoRR/EoRR answers to the listener's refresh
        control(name, d, "withdraw")
        wait_for(outdir, lambda ix: has(ix, "v4", "update", "withdraw") and has(ix, "v6", "update", "mp_unreach"), 10, "withdrawals")
        control(name, d, "softin")
        wait_for(outdir, lambda ix: has(ix, "v4", "route_refresh", "request"), 5, "ROUTE-REFRESH")
        control(name, d, "shutdown")
        wait_for(outdir, lambda ix: has(ix, "v4", "notification") and has(ix, "v6", "notification"), 10, "NOTIFICATION")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(5)
        except subprocess.TimeoutExpired:
            daemon.kill()
        listener.kill()
        listener.wait()
    return outdir


def select(name, outdir, golden):
    """Map listener files to golden names: first match wins."""
    ix = index(outdir)
    want = [
        ("open_ibgp_v4", "v4", "open", ""),
        ("open_ebgp_v6", "v6", "open", ""),
        ("keepalive", "v4", "keepalive", ""),
        ("update_ipv4_ibgp", "v4", "update", "nlri"),
        ("eor_ipv4", "v4", "update", "eor"),
        ("update_ipv6_ebgp", "v6", "update", "mp_reach"),
        ("eor_ipv6", "v6", "update", "eor"),
        ("withdraw_ipv4", "v4", "update", "withdraw"),
        ("withdraw_ipv6", "v6", "update", "mp_unreach"),
        ("borr_ipv4", "v4", "route_refresh", "borr"),
        ("eorr_ipv4", "v4", "route_refresh", "eorr"),
        ("route_refresh_ipv4", "v4", "route_refresh", "request"),
        ("notification_cease", "v4", "notification", ""),
    ]
    os.makedirs(golden, exist_ok=True)
    for what, fam, typ, tag in want:
        m = next((m for m in ix if m["family"] == fam and m["type"] == typ and (m["tag"] or "").startswith(tag)), None)
        if m is None:
            print("  %s: no %s" % (name, what))
            continue
        dst = os.path.join(golden, "%s_%s.bin" % (name, what))
        shutil.copyfile(os.path.join(outdir, m["file"]), dst)
        print("  %s <- %s" % (os.path.basename(dst), m["file"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", help="work dir to keep (default: temporary, removed)")
    ap.add_argument("--out", default=GOLDEN, help="where to write <daemon>_<what>.bin (default: %(default)s)")
    ap.add_argument("daemons", nargs="*", default=["bird", "frr", "gobgp"])
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="tabby-golden-")
    os.makedirs(work, exist_ok=True)
    try:
        for name in args.daemons:
            print("capturing", name)
            setup()
            try:
                outdir = capture(name, work)
                select(name, outdir, args.out)
            finally:
                teardown()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
