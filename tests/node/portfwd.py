#!/usr/bin/env python3
"""Tiny TCP forwarder used by node.sh (stdlib only).

usage: portfwd.py [--connect-netns /proc/PID/ns/net] LISTEN_IP:PORT=TARGET_IP:PORT ...

All listening sockets are bound first, in the network namespace the process starts in. Then, if
--connect-netns is given, the process switches to that network namespace (setns(2) via ctypes)
before it starts any thread, so every outgoing connection is made from inside it. Sockets keep the
namespace they were created in, so one process bridges 127.0.0.1 of the host to an address that
only exists inside the node's network namespace, without any veth or host address.

If the target refuses, the accepted connection is reset (SO_LINGER 0) rather than closed politely."""
import ctypes
import os
import socket
import struct
import sys
import threading

CLONE_NEWNET = 0x40000000


def parse(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def handle(client, target):
    try:
        upstream = socket.create_connection(target, timeout=5)
    except OSError:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        return
    upstream.settimeout(None)
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
    t.start()
    pipe(client, upstream)
    t.join()
    client.close()
    upstream.close()


def serve(listener, target):
    while True:
        client, _ = listener.accept()
        threading.Thread(target=handle, args=(client, target), daemon=True).start()


def main():
    args = sys.argv[1:]
    netns = None
    if len(args) >= 2 and args[0] == "--connect-netns":
        netns, args = args[1], args[2:]
    if not args:
        sys.exit(__doc__)
    pairs = []
    for a in args:
        listen, _, target = a.partition("=")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(parse(listen))
        s.listen(128)
        pairs.append((s, parse(target)))
    if netns:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(netns, os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            sys.exit("setns(%s): %s" % (netns, os.strerror(ctypes.get_errno())))
        os.close(fd)
    print("forwarding " + " ".join(args), flush=True)
    threads = [threading.Thread(target=serve, args=p, daemon=True) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


main()
