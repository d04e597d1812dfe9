"""``mailsift queue list|show|retry|delete``: the delivery queue for admins.

These commands open the gate's queue (``<state_dir>/queue`` of ``--config``) directly,
beside a running gate: the queue is safe for several processes, and the gate's workers
see a retry or a delete within their ``poll_interval``. A delete is final (no delivery,
no bounce) and goes to the decision log like every delivery outcome.
"""
from __future__ import annotations

import datetime
import json
import sys

_STATUSES = ("pending", "queued", "deferred", "delivered", "bounced", "deleted")


def register(sub) -> None:
    """Add this module's subcommands to the ``mailsift`` parser (argparse only; heavy
    imports belong in the handlers, so ``mailsift score`` stays fast)."""
    p = sub.add_parser("queue", help="the gate's delivery queue: list, show, retry, delete")
    qs = p.add_subparsers(dest="queue_action", required=True)

    q = qs.add_parser("list", help="messages in the queue, oldest first")
    q.add_argument("--status", choices=_STATUSES, help="a recipient status (pending: queued or deferred)")
    q.add_argument("--route", help="host:port a recipient goes to, or 'unrouteable'")
    q.add_argument("--sender", help="part of the envelope sender")
    q.add_argument("--recipient", help="part of a recipient address")
    q.add_argument("--limit", type=int, default=0, help="at most this many messages")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.add_argument("--config", default=None)
    q.set_defaults(func=_list)

    q = qs.add_parser("show", help="one message: envelope, recipients' status, replies, headers")
    q.add_argument("queue_id")
    q.add_argument("--json", action="store_true")
    q.add_argument("--config", default=None)
    q.set_defaults(func=_show)

    q = qs.add_parser("retry", help="try deferred recipients now (one message, or --all)")
    q.add_argument("queue_id", nargs="?")
    q.add_argument("--all", action="store_true", help="every deferred recipient")
    q.add_argument("--config", default=None)
    q.set_defaults(func=_retry)

    q = qs.add_parser("delete", help="stop delivering a message: no delivery, no bounce (logged)")
    q.add_argument("queue_id")
    q.add_argument("--reason", default="", help="why, for the decision log")
    q.add_argument("--config", default=None)
    q.set_defaults(func=_delete)


def _open(a):
    from classifier.cli import _gate_config
    from smtpgate.queue import Queue

    cfg = _gate_config(a)
    if cfg is None:
        return None, None
    return cfg, Queue(cfg.state_dir / "queue")


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _as_dict(e) -> dict:
    return {"queue_id": e.queue_id, "status": e.status, "arrival": e.arrival, "origin": e.origin,
            "mail_from": e.mail_from, "size": e.size, "route": e.route and f"{e.route[0]}:{e.route[1]}",
            "smtputf8": e.smtputf8, "body8bit": e.body8bit, "done": e.done, "meta": e.meta,
            "recipients": [{"rcpt": r.rcpt, "status": r.status, "attempts": r.attempts,
                            "next_attempt": r.next_attempt if r.status in ("queued", "deferred") else None,
                            "last_attempt": r.last_attempt, "last_reply": r.last_reply, "route": r.route,
                            "in_delivery": r.lease_owner is not None} for r in e.recipients]}


def _recipient_lines(e) -> list[str]:
    out = []
    for r in e.recipients:
        line = f"    {r.rcpt}  {r.status}  attempts {r.attempts}"
        if r.status in ("queued", "deferred"):
            line += f"  next {_when(r.next_attempt)}"
        if r.route:
            line += f"  via {r.route}"
        if r.last_reply:
            line += f"  ({r.last_reply})"
        out.append(line)
    return out


def _list(a) -> int:
    cfg, queue = _open(a)
    if queue is None:
        return 2
    try:
        entries = queue.list(status=a.status, route=a.route, sender=a.sender, recipient=a.recipient,
                             limit=a.limit or None)
        for e in entries:
            if a.json:
                print(json.dumps(_as_dict(e), ensure_ascii=False))
                continue
            print(f"{e.queue_id}  {_when(e.arrival)}  {e.status:9}  {e.size:>8}  {e.origin:7}  <{e.mail_from}>")
            print("\n".join(_recipient_lines(e)))
        if not a.json:
            print(f"{len(entries)} message{'s' if len(entries) != 1 else ''}")
    finally:
        queue.close()
    return 0


def _show(a) -> int:
    from email.parser import BytesHeaderParser

    from smtpgate.queue import QueueError

    cfg, queue = _open(a)
    if queue is None:
        return 2
    try:
        e = queue.get(a.queue_id)
        if e is None:
            print(f"mailsift: no message {a.queue_id} in the queue", file=sys.stderr)
            return 1
        try:
            head = queue.message(a.queue_id).split(b"\r\n\r\n", 1)[0]
        except QueueError:
            head = b""
        if a.json:
            print(json.dumps(_as_dict(e) | {"headers": head.decode("utf-8", "replace")}, ensure_ascii=False))
            return 0
        print(f"queue id:  {e.queue_id} ({e.origin})")
        print(f"arrived:   {_when(e.arrival)} UTC")
        print(f"status:    {e.status}" + (f" (finished {_when(e.done)} UTC)" if e.done else ""))
        print(f"from:      <{e.mail_from}>")
        print(f"size:      {e.size} bytes" + (", SMTPUTF8" if e.smtputf8 else "") + (", 8BITMIME" if e.body8bit else ""))
        if e.route:
            print(f"route:     {e.route[0]}:{e.route[1]}")
        for k, v in e.meta.items():
            if v is not None:
                print(f"{k + ':':10} {v}")
        print("recipients:")
        print("\n".join(_recipient_lines(e)))
        print("headers:")
        parsed = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        for name, value in parsed.items():
            print(f"    {name}: {' '.join(str(value).split())}")
    finally:
        queue.close()
    return 0


def _retry(a) -> int:
    if not a.all and not a.queue_id:
        print("mailsift: a queue id, or --all", file=sys.stderr)
        return 2
    cfg, queue = _open(a)
    if queue is None:
        return 2
    try:
        if a.queue_id and queue.get(a.queue_id) is None:
            print(f"mailsift: no message {a.queue_id} in the queue", file=sys.stderr)
            return 1
        n = queue.retry(None if a.all else a.queue_id)
        print(f"{n} deferred recipient{'s' if n != 1 else ''} due now")
    finally:
        queue.close()
    return 0


def _delete(a) -> int:
    import getpass

    from smtpgate.decisionlog import DecisionLog
    from smtpgate.deliverer import log_delete
    from smtpgate.queue import QueueError

    cfg, queue = _open(a)
    if queue is None:
        return 2
    decisions = DecisionLog(cfg.decision_log_path)
    try:
        try:
            deleted, busy = queue.delete(a.queue_id)
        except QueueError as exc:
            print(f"mailsift: {exc}", file=sys.stderr)
            return 1
        entry = queue.get(a.queue_id)
        log_delete(decisions, entry, deleted, who=getpass.getuser(), reason=a.reason)
        for r in deleted:
            print(f"deleted {r}")
        for r in busy:
            print(f"{r}: being delivered right now, not deleted")
        if not deleted and not busy:
            print("nothing pending: every recipient already has its outcome")
    finally:
        decisions.close()
        queue.close()
    return 0
