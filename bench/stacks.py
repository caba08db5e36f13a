#!/usr/bin/env python3
"""Where the time goes in a folded perf profile (bench/profile.sh with FOLDED=PATH): the share of
samples whose stack contains each of a few frames, so a before/after pair can be compared in a
commit message. Usage: bench/stacks.py PROFILE.folded [PATTERN ...]"""
import re
import sys

DEFAULT = [
    ("all kernel (syscalls, loopback TCP)", r"\[k\]|entry_SYSCALL|do_syscall"),
    ("write path: writev/sendmsg", r"writev|sendmsg|tcp_sendmsg"),
    ("read path: recvmsg/read", r"recvmsg|sys_read|tcp_recvmsg"),
    ("epoll_wait", r"epoll_wait"),
    ("rustls encrypt (seal)", r"seal|encrypt"),
    ("rustls decrypt (open)", r"open_in_place|decrypt"),
    # Anchored at a frame's start: type parameters (WebSocketStream<...> in our own frames)
    # would otherwise count every stack that merely carries the type.
    ("tungstenite", r"(^|;)<?(tokio_)?tungstenite::"),
    ("our framing (socket.rs)", r"(^|;)<?wss_chat::socket::"),
    ("tokio scheduler and wakers", r"tokio::runtime::(scheduler|task)"),
    ("outbox channel", r"mpsc|Outbox|OutboxReader"),
    ("fan-out (Room::deliver)", r"RoomState::deliver|Room::publish|Room::settle"),
    ("sanitise", r"ammonia|sanitize"),
    ("sqlite", r"sqlite|rusqlite"),
    ("allocator", r"malloc|free|_rdl_|__rust_alloc|__rust_dealloc|cfree"),
]

def main():
    path = sys.argv[1]
    pats = [(p, p) for p in sys.argv[2:]] or DEFAULT
    total = 0
    counts = [0] * len(pats)
    regs = [re.compile(r) for _, r in pats]
    for line in open(path, errors="replace"):
        stack, _, n = line.rstrip().rpartition(" ")
        try:
            n = int(n)
        except ValueError:
            continue
        total += n
        for i, r in enumerate(regs):
            if r.search(stack):
                counts[i] += n
    print(f"{total} samples")
    for (label, _), c in zip(pats, counts):
        print(f"{100.0 * c / max(total, 1):6.1f} %  {label}")

main()
