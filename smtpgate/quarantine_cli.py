"""``mailsift quarantine``: the admin's view of quarantined mail, and "report as spam".

    mailsift quarantine list [--recipient A] [--sender A] [--domain D] [--classification C]
                             [--since T] [--until T] [--state held|released|deleted|all] [--json]
    mailsift quarantine show ID [--raw]
    mailsift quarantine release ID [--to ADDR...] [--why TEXT] [--force] [--no-learn]
    mailsift quarantine delete ID [--why TEXT]
    mailsift quarantine purge
    mailsift quarantine reindex
    mailsift quarantine report (--queue-id ID | --file F) [--why TEXT]
    mailsift feedback review | show ID [--raw] | approve ID | reject ID | stats | retry

Every command reads the gate's configuration (``--config``; the quarantine, the queue
and the feedback store live in its ``state_dir``) and acts as ``--who`` (default: the
OS user), which the quarantine and the feedback store record. The commands are thin:
the control panel calls the same functions in ``smtpgate.quarantine`` and
``training.feedback``.
"""
from __future__ import annotations

import re
import sys
import time


def register(sub) -> None:
    """Add this module's subcommands to the ``mailsift`` parser (argparse only; heavy
    imports belong in the handlers, so ``mailsift score`` stays fast)."""
    p = sub.add_parser("quarantine", help="quarantined mail: list, show, release, delete, purge;"
                                          " report delivered mail as spam")
    qsub = p.add_subparsers(dest="quarantine_command", required=True)

    def common(x):
        x.add_argument("--config", default=None, help="gate TOML (default: the shipped smtpgate/default.toml)")
        x.add_argument("--who", default=None, help="who acts, as recorded (default: the OS user)")
        return x

    x = common(qsub.add_parser("list", help="search quarantined mail, newest first"))
    x.add_argument("--recipient", help="an address, or @domain")
    x.add_argument("--sender", help="an address, or @domain ('' for the null sender)")
    x.add_argument("--domain", help="a recipient domain")
    x.add_argument("--classification", help="a classification id (e.g. combined_score)")
    x.add_argument("--since", help="YYYY-MM-DD[THH:MM[:SS]] (UTC) or an age: 30m, 12h, 7d")
    x.add_argument("--until", help="the same forms; exclusive")
    x.add_argument("--state", default="held", choices=["held", "released", "deleted", "all"])
    x.add_argument("--limit", type=int, default=50)
    x.add_argument("--offset", type=int, default=0)
    x.add_argument("--json", action="store_true", help="one JSON object per message")
    x.set_defaults(func=_list)

    x = common(qsub.add_parser("show", help="a message's record (envelope, evidence, scores, actions)"))
    x.add_argument("id")
    x.add_argument("--raw", action="store_true", help="write the message as received to stdout")
    x.set_defaults(func=_show)

    x = common(qsub.add_parser("release", help="deliver through the queue (and teach the classifiers"
                                               " where the contract says learn)"))
    x.add_argument("id")
    x.add_argument("--to", nargs="+", metavar="ADDR", help="deliver to these addresses instead (nothing is learned)")
    x.add_argument("--why", default="", help="recorded with the release and the feedback")
    x.add_argument("--force", action="store_true", help="deliver again to an address it was released to")
    x.add_argument("--no-learn", action="store_true", help="deliver without reporting it as ham")
    x.set_defaults(func=_release)

    x = common(qsub.add_parser("delete", help="delete a message's bytes (its record stays until purged)"))
    x.add_argument("id")
    x.add_argument("--why", default="")
    x.set_defaults(func=_delete)

    x = common(qsub.add_parser("purge", help="remove messages older than [quarantine] retention_days"))
    x.set_defaults(func=_purge)

    x = common(qsub.add_parser("reindex", help="rebuild the search index from the message files"))
    x.set_defaults(func=_reindex)

    x = common(qsub.add_parser("report", help="report a delivered message as spam (teaches the classifiers)"))
    g = x.add_mutually_exclusive_group(required=True)
    g.add_argument("--queue-id", help="our queue id (in our Received header: '... by <gate> (mailsift) ... id ID')")
    g.add_argument("--file", help="the message as the user has it ('-' for stdin)")
    x.add_argument("--why", default="")
    x.set_defaults(func=_report)

    p = sub.add_parser("feedback", help="releases and spam reports: the review queue, reporters, retries")
    fsub = p.add_subparsers(dest="feedback_command", required=True)
    x = common(fsub.add_parser("review", help="feedback held for review (rate limit, overwhelming verdict,"
                                              " low agreement), oldest first"))
    x.add_argument("--limit", type=int, default=1000)
    x.set_defaults(func=_feedback_cmd, action="review")
    x = common(fsub.add_parser("show", help="one feedback item"))
    x.add_argument("id", type=int)
    x.add_argument("--raw", action="store_true", help="write its message to stdout")
    x.set_defaults(func=_feedback_cmd, action="show")
    for name, text in (("approve", "teach a held item to the scorer"),
                       ("reject", "drop a held item (it counts against its reporter)")):
        x = common(fsub.add_parser(name, help=text))
        x.add_argument("id", type=int)
        x.set_defaults(func=_feedback_cmd, action=name)
    x = common(fsub.add_parser("stats", help="per reporter: what they sent, their agreement weight"))
    x.set_defaults(func=_feedback_cmd, action="stats")
    x = common(fsub.add_parser("retry", help="send feedback left pending while the scorer was unreachable"))
    x.set_defaults(func=_feedback_cmd, action="retry")


# --------------------------------------------------------------------------------------
def _fail(text: str, code: int = 1) -> int:
    print(f"mailsift: {text}", file=sys.stderr)
    return code


def _who(a) -> str:
    if a.who:
        return a.who
    import getpass

    return getpass.getuser()


def _config(a):
    from classifier.cli import _gate_config

    return _gate_config(a)


def _quarantine(cfg):
    from .quarantine import Quarantine

    return Quarantine(cfg.state_dir / "quarantine", retention=cfg.quarantine.retention)


def _queue(cfg):
    from .queue import Queue

    return Queue(cfg.state_dir / "queue")


def _feedback(cfg):
    """The feedback store, ``<state_dir>/feedback.db``, teaching the scorer of the gate's
    ``[scorer] addresses``."""
    from training.feedback import open_feedback

    return open_feedback(cfg)


_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """A Unix time from ``YYYY-MM-DD[THH:MM[:SS]]`` (UTC unless an offset is given) or
    an age before now (``30m``, ``12h``, ``7d``, ``2w``)."""
    import datetime

    if text is None:
        return None
    m = _AGE.fullmatch(text.strip())
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        t = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a date, time or age: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


# --------------------------------------------------------------------------------------
def _list(a) -> int:
    import json

    try:
        since, until = parse_time(a.since), parse_time(a.until)
    except ValueError as exc:
        return _fail(str(exc), 2)

    def act(cfg, q) -> int:
        found = q.search(recipient=a.recipient, sender=a.sender, domain=a.domain,
                         classification=a.classification, since=since, until=until,
                         state=None if a.state == "all" else a.state, limit=a.limit, offset=a.offset)
        for e in found:
            if a.json:
                print(json.dumps(e.to_dict(), ensure_ascii=False))
                continue
            rcpts = e.rcpts[0] + (f" (+{len(e.rcpts) - 1})" if len(e.rcpts) > 1 else "") if e.rcpts else "-"
            score = "-" if e.score is None else f"{e.score:.4f}"
            print(f"{e.id}  {_stamp(e.stored)}  {e.state:8}  {e.classification or '-':22} {score:>6}  "
                  f"<{e.sender}> -> {rcpts}  {e.subject or ''}")
        if not a.json:
            print(f"{len(found)} message(s)", file=sys.stderr)
        return 0
    return _with_quarantine(a, act)


def _show(a) -> int:
    import json

    def act(cfg, q) -> int:
        got = q.get(a.id)
        if got is None:
            return _fail(f"no quarantined message {a.id}")
        message, record = got
        if not a.raw:
            print(json.dumps(record, indent=2, ensure_ascii=False, default=str))
        elif message is None:
            return _fail(f"{a.id} was deleted: only its record is left")
        else:
            sys.stdout.buffer.write(message)
        return 0
    return _with_quarantine(a, act)


def _release(a) -> int:
    from .quarantine import QuarantineError
    from .queue import QueueError

    cfg = _config(a)
    if cfg is None:
        return 2
    q, queue = _quarantine(cfg), _queue(cfg)
    feedback = None
    try:
        if not a.to and not a.no_learn:
            feedback = _feedback(cfg)
        r = q.release(a.id, queue=queue, feedback=feedback, who=_who(a), why=a.why, to=a.to,
                      force=a.force, learn=not a.no_learn)
    except (QuarantineError, QueueError) as exc:
        return _fail(str(exc))
    finally:
        q.close()
        queue.close()
        if feedback is not None:
            feedback.close()
    print(f"released {r.quarantine_id} to {', '.join(r.to)}: queue id {r.queue_id}")
    if r.feedback is not None:
        from training.feedback import FeedbackResult, format_result

        print(format_result(FeedbackResult(**r.feedback)))
    elif r.feedback_error:
        return _fail(f"released, but the feedback failed: {r.feedback_error}")
    else:
        print(f"not learned: {r.not_learned}")
    return 0


def _with_quarantine(a, act) -> int:
    """Run ``act(cfg, quarantine)`` with the gate's quarantine open."""
    cfg = _config(a)
    if cfg is None:
        return 2
    q = _quarantine(cfg)
    try:
        return act(cfg, q)
    finally:
        q.close()


def _delete(a) -> int:
    from .quarantine import QuarantineError

    def act(cfg, q) -> int:
        try:
            q.delete(a.id, who=_who(a), why=a.why)
        except QuarantineError as exc:
            return _fail(str(exc))
        print(f"deleted {a.id}")
        return 0
    return _with_quarantine(a, act)


def _purge(a) -> int:
    def act(cfg, q) -> int:
        # a release a crash left unsettled is settled (and learned) before its message goes
        queue, feedback = _queue(cfg), _feedback(cfg)
        try:
            n = q.purge(queue=queue, feedback=feedback)
        finally:
            queue.close()
            feedback.close()
        print(f"purged {n} message(s) older than {cfg.quarantine.retention / 86400:g} days")
        return 0
    return _with_quarantine(a, act)


def _reindex(a) -> int:
    def act(cfg, q) -> int:
        print(f"indexed {q.reindex()} message(s)")
        return 0
    return _with_quarantine(a, act)


def _report(a) -> int:
    from training.feedback import FeedbackError

    from .quarantine import QuarantineError, report_spam
    from .queue import QueueError

    cfg = _config(a)
    if cfg is None:
        return 2
    message = None
    if a.file:
        try:
            if a.file == "-":
                message = sys.stdin.buffer.read()
            else:
                with open(a.file, "rb") as f:
                    message = f.read()
        except OSError as exc:
            return _fail(f"{a.file}: {exc.strerror}")
    queue, feedback = _queue(cfg), _feedback(cfg)
    try:
        r = report_spam(queue, feedback, queue_id=a.queue_id, message=message, who=_who(a), why=a.why,
                        hostname=cfg.hostname)
    except (QuarantineError, QueueError, FeedbackError) as exc:
        return _fail(str(exc))
    finally:
        queue.close()
        feedback.close()
    from training.feedback import FeedbackResult, format_result

    what = f"queue id {r.queue_id}" if r.queue_id else "the message (not found in the queue)"
    print(f"reported {what} as spam; {format_result(FeedbackResult(**r.feedback))}")
    return 0


def _feedback_cmd(a) -> int:
    from training.feedback import (
        FeedbackError,
        format_item,
        format_items,
        format_result,
        format_stats,
    )

    cfg = _config(a)
    if cfg is None:
        return 2
    fb = _feedback(cfg)
    try:
        if a.action == "review":
            print(format_items(fb.review_queue(a.limit)))
        elif a.action == "show":
            item = fb.get(a.id)
            if item is None:
                return _fail(f"no feedback {a.id}")
            if a.raw:
                sys.stdout.buffer.write(item.message)
            else:
                print(format_item(item))
        elif a.action in ("approve", "reject"):
            print(format_result(getattr(fb, a.action)(a.id, _who(a))))
        elif a.action == "stats":
            print(format_stats(fb.reporter_stats()))
        else:
            results = fb.retry_pending()
            print("\n".join(format_result(r) for r in results) if results else "nothing pending")
    except FeedbackError as exc:
        return _fail(str(exc))
    finally:
        fb.close()
    return 0
