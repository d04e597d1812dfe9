"""Outgoing (submission) users kept in the state store, so every gate node sharing it
knows them and an admin manages them without editing the configuration:

    mailsift gate user add alice@example.test --senders alice@example.test
    mailsift gate user list
    mailsift gate user del alice@example.test

Passwords are stored as scrypt hashes (``smtpgate.auth``), never in clear. Users in the
configuration's ``[outgoing.users]`` still work; a user in the store wins over one of
the same name there.
"""
from __future__ import annotations

import json

from .config import User

_INDEX = "cred:index"


def _key(name: str) -> str:
    return f"cred:user:{name.lower()}"


async def get_user(store, name: str) -> User | None:
    raw = await store.get(_key(name))
    if raw is None:
        return None
    d = json.loads(raw)
    return User(d["name"], d["password_hash"], tuple(d.get("senders", ())))


async def put_user(store, user: User) -> None:
    if not user.password_hash.startswith("scrypt$"):
        raise ValueError("a user's password must be stored as a scrypt hash")
    await store.set(_key(user.name), json.dumps({"name": user.name, "password_hash": user.password_hash,
                                                 "senders": list(user.senders)}), None)
    names = set(await list_users(store)) | {user.name.lower()}
    await store.set(_INDEX, json.dumps(sorted(names)), None)


async def delete_user(store, name: str) -> bool:
    existed = await store.get(_key(name)) is not None
    await store.delete(_key(name))
    names = set(await list_users(store)) - {name.lower()}
    await store.set(_INDEX, json.dumps(sorted(names)), None)
    return existed


async def list_users(store) -> list[str]:
    raw = await store.get(_INDEX)
    return json.loads(raw) if raw is not None else []
